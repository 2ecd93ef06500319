package openflow

import "testing"

// Printing helpers others rely on to compare with ovs-ofctl output.

func TestStripDumpFlowsStats(t *testing.T) {
	cases := []struct{ line, want string }{
		{" cookie=0x0, duration=12.345s, table=0, n_packets=3, n_bytes=180, priority=100,ip,in_port=1 actions=output:2",
			"priority=100,ip,in_port=1 actions=output:2"},
		{" cookie=0x5, duration=1.0s, table=3, n_packets=0, n_bytes=0, idle_timeout=60, hard_timeout=10, send_flow_rem reset_counts idle_age=1, hard_age=0, priority=200,ip,nw_tos=0 actions=set_field:17->ip_dscp,output:2",
			"priority=200,ip,nw_tos=0 actions=set_field:17->ip_dscp,output:2"},
		{" cookie=0x0, duration=1s, table=0, n_packets=0, n_bytes=0, actions=drop", "actions=drop"},
		{"cookie=0x0, table=1, n_packets=0, n_bytes=0, importance=5, reg0=0x1 actions=learn(table=2,NXM_NX_REG0[])",
			"reg0=0x1 actions=learn(table=2,NXM_NX_REG0[])"},
	}
	for _, c := range cases {
		if got := StripDumpFlowsStats(c.line); got != c.want {
			t.Errorf("StripDumpFlowsStats(%q)\n got  %q\n want %q", c.line, got, c.want)
		}
	}
}

func TestFlowModTexts(t *testing.T) {
	fm := rewriteFlow()
	want := "priority=200,ip,in_port=7,nw_src=10.1.0.5,nw_dst=10.2.0.9,nw_tos=0 actions=set_field:02:00:00:00:00:01->eth_src," +
		"set_field:02:00:00:00:00:02->eth_dst,set_field:198.18.0.1->ip_src,set_field:198.18.0.2->ip_dst,set_field:17->ip_dscp,output:2"
	if got := fm.FlowText(); got != want {
		t.Errorf("FlowText\n got  %s\n want %s", got, want)
	}
	if got := (&FlowMod{Priority: DefaultPriority}).FlowText(); got != "actions=drop" {
		t.Errorf("empty flow: %q", got)
	}
	if got := (&FlowMod{Command: FlowDelete, Table: TableAll, Cookie: 1, CookieMask: 3}).String(); got != "table=255,cookie=0x1/0x3" {
		t.Errorf("delete String: %q", got)
	}
	if got := (&Controller{}).String(); got != "CONTROLLER:65535" {
		t.Errorf("zero Controller prints %q", got)
	}
}

func TestFieldByName(t *testing.T) {
	for name, want := range map[string]*Field{"ip_src": FieldIPv4Src, "NXM_OF_IP_SRC": FieldIPv4Src, "reg15": FieldReg[15],
		"NXM_NX_TUN_IPV4_DST": FieldTunDst, "in_port": FieldNXInPort, "in_port_oxm": FieldInPort} {
		if f, ok := FieldByName(name); !ok || f != want {
			t.Errorf("FieldByName(%q) = %v, %v", name, f, ok)
		}
	}
	if _, ok := FieldByName("nope"); ok {
		t.Error("FieldByName found an unknown name")
	}
}
