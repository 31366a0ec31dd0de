# Stand-in for Vivado, Vitis HLS and vitis-run (tests only; see README.md beside this file).
#
# Runs the Tcl script FINN generated in this real tclsh. The vendor commands FINN's scripts use are
# defined below: most do nothing, those whose output FINN reads afterwards write a placeholder of that
# file, and the ones a real tool would refuse check the same precondition first (environment, board
# part in the board repository, HLS includes resolvable, IP present in the IP repository, source
# files present). A command not defined here is a Tcl error, so a change in FINN's scripts is seen.
#
# argv: <tool> <path the tool was called by> <the tool's own arguments...>

set ::tool [lindex $argv 0]
set ::fake_dir [file dirname [file normalize [info script]]]
set ::called_as [lindex $argv 1]
set ::targs [lrange $argv 2 end]
# <root>/Vivado/<version>/bin/vivado: the version is the install folder's name, as for real installs
set ::version [file tail [file dirname [file dirname $::called_as]]]

proc fail {msg} {
    puts stderr "ERROR: \[fake $::tool\] $msg"
    exit 1
}

proc env_or_fail {name why} {
    if {![info exists ::env($name)] || $::env($name) eq ""} { fail "$name is not set ($why)" }
    return $::env($name)
}

proc write_file {path text} {
    file mkdir [file dirname $path]
    set f [open $path w]
    puts $f $text
    close $f
}

proc log_call {what} {
    if {[info exists ::env(FAKE_TOOLCHAIN_LOG)]} {
        set f [open $::env(FAKE_TOOLCHAIN_LOG) a]
        puts $f "$::tool $what"
        close $f
    }
    # Simulates a build killed at this tool call (power cut, Ctrl-C of the whole process group).
    if {[info exists ::env(FAKE_TOOLCHAIN_KILL)] && [string match $::env(FAKE_TOOLCHAIN_KILL) $what]} {
        # process group: 5th field of /proc/<pid>/stat, after the ")" closing the command name;
        # the shell's builtin kill (no procps needed) signals the whole group
        set stat [read_text /proc/[pid]/stat]
        set pgid [lindex [string range $stat [expr {[string last ")" $stat] + 2}] end] 2]
        exec /bin/sh -c "kill -9 -$pgid"
    }
}

# ----------------------------------------------------------------------------- preconditions

proc check_install {} {
    set home [env_or_fail [expr {$::tool eq "vivado" ? "XILINX_VIVADO" : "XILINX_HLS"}] \
        "source the Xilinx settings64.sh"]
    if {![file isdirectory $home]} { fail "$home does not exist" }
    set vivado [env_or_fail XILINX_VIVADO "source Vivado's settings64.sh"]
    set lib [file join $vivado lib lnx64.o]
    set ld [expr {[info exists ::env(LD_LIBRARY_PATH)] ? [split $::env(LD_LIBRARY_PATH) :] : {}}]
    if {[lsearch -exact $ld $lib] < 0 && [lsearch -exact $ld "$lib/"] < 0} {
        fail "LD_LIBRARY_PATH lacks $lib (FINN's launcher puts it there)"
    }
}

# ----------------------------------------------------------------------------- option parsing

# Splits args into {options positional}: options is a dict of -name -> value (or 1 for flags).
proc parse_opts {arglist {flags {}}} {
    set opts [dict create]
    set pos {}
    for {set i 0} {$i < [llength $arglist]} {incr i} {
        set a [lindex $arglist $i]
        if {[string index $a 0] eq "-" && ![string is double -strict $a]} {
            if {[lsearch -exact $flags $a] >= 0 || $i + 1 >= [llength $arglist]} {
                dict set opts $a 1
            } else {
                incr i
                dict set opts $a [lindex $arglist $i]
            }
        } else {
            lappend pos $a
        }
    }
    return [list $opts $pos]
}

# ----------------------------------------------------------------------------- Vitis HLS

set ::hls [dict create project "" solution "" part "" top "" files {}]

proc open_project {args} {
    lassign [parse_opts $args {-reset}] opts pos
    set name [lindex $pos 0]
    if {$::tool eq "vivado"} {
        if {![file exists $name]} { fail "open_project: $name not found" }
        set ::viv(proj_dir) [file dirname [file normalize $name]]
        set ::viv(proj_name) [file rootname [file tail $name]]
        return
    }
    dict set ::hls project [file normalize $name]
    file mkdir [dict get $::hls project]
}
proc open_solution {args} {
    lassign [parse_opts $args {-reset}] opts pos
    dict set ::hls solution [lindex $pos 0]
}
proc set_part {part} { dict set ::hls part $part }
proc set_top {top} { dict set ::hls top $top }
proc add_files {args} {
    lassign [parse_opts $args {-norecurse -tb -quiet}] opts pos
    foreach f $pos {
        if {![file exists $f]} { fail "add_files: $f does not exist" }
    }
    if {$::tool eq "vivado"} { return $pos }
    set cflags [expr {[dict exists $opts -cflags] ? [dict get $opts -cflags] : ""}]
    foreach f $pos { dict lappend ::hls files [list [file normalize $f] $cflags] }
}
proc create_clock {args} {}
foreach cmd {config_compile config_interface config_rtl config_schedule config_export config_dataflow
             set_directive_interface set_directive_pipeline set_directive_unroll set_directive_array_partition
             set_directive_stream set_directive_dataflow set_directive_inline set_directive_resource
             set_directive_bind_storage set_directive_bind_op set_directive_loop_tripcount close_project
             close_solution} {
    proc $cmd {args} {}
}

# The include lines a compiler would follow, resolved as g++ would (source dir, then each -I).
proc check_includes {src cflags} {
    set dirs [list [file dirname $src]]
    foreach flag $cflags {
        if {[string match -I* $flag]} {
            set d [string range $flag 2 end]
            if {$d eq ""} { fail "compile flags of $src have an empty -I (an unset variable?): $cflags" }
            lappend dirs $d
        }
    }
    set f [open $src r]
    set text [read $f]
    close $f
    foreach {all inc} [regexp -all -inline {#include\s+"([^"]+)"} $text] {
        set found 0
        foreach d $dirs { if {[file exists [file join $d $inc]]} { set found 1; break } }
        if {!$found} { fail "$src: fatal error: $inc: No such file or directory (searched: [join $dirs {, }])" }
    }
}

proc csynth_design {args} {
    foreach key {project solution part top} {
        if {[dict get $::hls $key] eq ""} { fail "csynth_design before $key was set" }
    }
    if {[llength [dict get $::hls files]] == 0} { fail "csynth_design: no source files" }
    foreach entry [dict get $::hls files] { check_includes {*}$entry }
    set top [dict get $::hls top]
    set sol [file join [dict get $::hls project] [dict get $::hls solution]]
    write_file [file join $sol syn report ${top}_csynth.xml] [join [list \
        "<profile><!-- fake Vitis HLS: no synthesis was run, resources are placeholders -->" \
        "<AreaEstimates><Resources><BRAM_18K>0</BRAM_18K><DSP>0</DSP><FF>0</FF><LUT>0</LUT><URAM>0</URAM>" \
        "</Resources></AreaEstimates></profile>"] \n]
    write_file [file join $sol syn verilog ${top}.v] "// fake Vitis HLS placeholder for $top\nmodule ${top}();\nendmodule"
}

proc export_design {args} {
    set top [dict get $::hls top]
    set sol [file join [dict get $::hls project] [dict get $::hls solution]]
    if {![file exists [file join $sol syn report ${top}_csynth.xml]]} { fail "export_design before csynth_design" }
    write_file [file join $sol impl verilog ${top}.v] "// fake Vitis HLS placeholder for $top\nmodule ${top}();\nendmodule"
    write_file [file join $sol impl ip component.xml] [component_xml xilinx.com hls $top]
}

proc component_xml {vendor library name} {
    return [join [list {<?xml version="1.0" encoding="UTF-8"?>} \
        {<spirit:component xmlns:spirit="http://www.spiritconsortium.org/XMLSchema/SPIRIT/1685-2009">} \
        "  <spirit:vendor>$vendor</spirit:vendor>" "  <spirit:library>$library</spirit:library>" \
        "  <spirit:name>$name</spirit:name>" "  <spirit:version>1.0</spirit:version>" \
        {</spirit:component>}] \n]
}

# ----------------------------------------------------------------------------- Vivado

array set ::viv {proj_dir "" proj_name "" part "" board_part "" bd "" bd_path "" top "" ipx_root ""}
set ::viv(repo_paths) {}
set ::viv(ip_repo_paths) {}
array set ::params {}

proc create_project {args} {
    lassign [parse_opts $args {-force -in_memory}] opts pos
    set ::viv(proj_name) [lindex $pos 0]
    set ::viv(proj_dir) [file normalize [expr {[llength $pos] > 1 ? [lindex $pos 1] : "."}]]
    if {[dict exists $opts -part]} { set ::viv(part) [dict get $opts -part] }
    write_file [file join $::viv(proj_dir) $::viv(proj_name).xpr] "<!-- fake Vivado project -->"
}
proc current_project {args} { return $::viv(proj_name) }
proc current_fileset {args} { return sources_1 }
proc get_filesets {args} { return $args }
proc get_runs {args} { return $args }
proc set_param {name value} { set ::params($name) $value }
proc get_param {name} { return [expr {[info exists ::params($name)] ? $::params($name) : ""}] }
proc set_msg_config {args} {}
proc reset_msg_config {args} {}
proc update_compile_order {args} {}
proc update_ip_catalog {args} {
    foreach d $::viv(ip_repo_paths) {
        if {![file isdirectory $d]} { fail "update_ip_catalog: IP repository $d does not exist" }
    }
}
proc version {args} { return $::version }

# Every file named ``tail`` below ``dir``.
proc find_files {dir tail} {
    set found {}
    foreach f [glob -nocomplain -directory $dir *] {
        if {[file isdirectory $f]} {
            lappend found {*}[find_files $f $tail]
        } elseif {[file tail $f] eq $tail} {
            lappend found $f
        }
    }
    return $found
}
proc read_text {path} {
    set f [open $path r]
    set text [read $f]
    close $f
    return $text
}

# Board files: <repo>/.../<board>/<version>/board.xml naming vendor, name and file_version. Vivado
# searches the project's and board.repoPaths' folders, then its own board_files and its installed
# XilinxBoardStore, and matches vendor and name case-insensitively (Avnet's board.xml says
# name="Ultra96v2" where FINN sets avnet.com:ultra96v2:part0:1.2).
proc check_board_part {bp} {
    lassign [split $bp :] vendor name part0 ver
    set repos [concat $::viv(repo_paths) [get_param board.repoPaths] \
        [list [file join $::env(XILINX_VIVADO) data boards board_files] \
              [file join $::env(XILINX_VIVADO) data xhub boards XilinxBoardStore boards]]]
    foreach repo $repos {
        if {![file isdirectory $repo]} { continue }
        foreach xml [find_files $repo board.xml] {
            set text [read_text $xml]
            if {[regexp -nocase "<board\[^>\]*vendor=\"$vendor\"" $text]
                    && [regexp -nocase "<board\[^>\]*name=\"$name\"" $text]
                    && [regexp "<file_version>$ver</file_version>" $text]} {
                return
            }
        }
    }
    fail "\[Board 49-71\] The board_part definition was not found for $bp (board repositories: [join $repos {, }])"
}

proc set_property {args} {
    lassign [parse_opts $args {-quiet}] opts pos
    if {[dict exists $opts -dict] || [dict exists $opts -name]} { return }
    lassign $pos name value
    switch -- [string tolower $name] {
        board_part { check_board_part $value; set ::viv(board_part) $value }
        board_part_repo_paths { set ::viv(repo_paths) $value }
        ip_repo_paths { set ::viv(ip_repo_paths) $value }
        top { set ::viv(top) $value }
        part { set ::viv(part) $value }
    }
}
proc get_property {args} {
    lassign [parse_opts $args {-quiet}] opts pos
    lassign $pos name obj
    switch -- $name {
        BOARD_PART_REPO_PATHS { return $::viv(repo_paths) }
        VLNV { return "xilinx.com:ip:[lindex [split $obj :] 2]:1.0" }
        CONFIG.ADDR_WIDTH { return 12 }
        PROGRESS { return "100%" }
        NEEDS_REFRESH { return 0 }
        NAME { return $obj }
        default { return "" }
    }
}
proc get_ipdefs {args} {
    lassign [parse_opts $args {-all}] opts pos
    return [lindex $pos 0]
}

# IP instantiation: an IP from FINN (HLS layer or stitched design) must be in an IP repository.
proc ip_in_repos {name} {
    foreach d [concat $::viv(ip_repo_paths) [list $::viv(proj_dir)]] {
        if {![file isdirectory $d]} { continue }
        foreach xml [find_files $d component.xml] {
            if {[string first "<spirit:name>$name</spirit:name>" [read_text $xml]] >= 0} { return 1 }
        }
    }
    return 0
}
# The block design as FINN's scripts build it, for the hardware handoff: cells in creation order with
# their VLNV, the cells whose m_axi_gmem0 reaches the smartconnect (the IODMAs), and every address
# segment FINN's assign_axi_addr_proc places ({cell interface offset range}).
set ::bd_cells {}
set ::bd_masters {}
set ::bd_segs {}
proc create_bd_cell {args} {
    lassign [parse_opts $args] opts pos
    if {[dict exists $opts -vlnv]} {
        lassign [split [dict get $opts -vlnv] :] vendor lib name
        if {$lib in {hls finn} && ![ip_in_repos $name]} {
            fail "create_bd_cell: IP [dict get $opts -vlnv] not found in the IP repositories $::viv(ip_repo_paths)"
        }
        lappend ::bd_cells [lindex $pos 0] [dict get $opts -vlnv]
    }
    return [lindex $pos 0]
}
# the pins and segments themselves, by path, so that connections and addresses can be recorded
proc get_bd_intf_pins {args} {
    lassign [parse_opts $args {-quiet}] opts pos
    return [join $pos]
}
proc get_bd_addr_segs {args} {
    lassign [parse_opts $args {-quiet}] opts pos
    return [join $pos]
}
proc connect_bd_intf_net {args} {
    lassign [parse_opts $args] opts pos
    foreach pin $pos {
        if {[string match */m_axi_gmem0 $pin]} { lappend ::bd_masters [lindex [split $pin /] 0] }
    }
}
proc assign_bd_address {args} {
    lassign [parse_opts $args] opts pos
    if {![dict exists $opts -offset]} { return }
    lassign [split [lindex $pos 0] /] cell intf
    lappend ::bd_segs [list $cell $intf [dict get $opts -offset] [dict get $opts -range]]
}
# The .hwh Vivado writes for this design, laid out by tests/host/finn_hwh.py (the layout PYNQ's parsers
# read): the design goes there as JSON, with FINN's cells (its partitions and IODMAs) in creation order.
proc write_hwh {path} {
    set zynq ""
    set cores {}
    foreach {cell vlnv} $::bd_cells {
        if {[string match *:processing_system7:* $vlnv]} { set zynq zynq_7000 }
        if {[string match *:zynq_ultra_ps_e:* $vlnv]} { set zynq zynq_us+ }
        if {[lindex [split $vlnv :] 1] ne "finn"} { continue }
        set slaves {}
        foreach seg $::bd_segs {
            lassign $seg c intf offset range
            if {$c eq $cell} { lappend slaves "\[\"$intf\", $offset, $range\]" }
        }
        set dma [expr {$cell in $::bd_masters ? "true" : "false"}]
        lappend cores "{\"instance\": \"$cell\", \"vlnv\": \"$vlnv\", \"slaves\": \[[join $slaves {, }]\], \"dma\": $dma}"
    }
    if {$zynq eq ""} { fail "write_hwh: the block design has no Zynq PS" }
    set design [file join [file dirname $path] design.json]
    write_file $design "{\"name\": \"$::viv(bd)\", \"zynq\": \"$zynq\", \"cores\": \[[join $cores {, }]\]}"
    set script [file join [file dirname [file dirname $::fake_dir]] host finn_hwh.py]
    if {[catch {exec [env_or_fail FAKE_TOOLCHAIN_PYTHON "install.py sets it"] $script $design $path} msg]} {
        fail "write_hwh: $msg"
    }
}
proc create_bd_design {name} {
    set ::viv(bd) $name
    set ::viv(bd_path) [file join $::viv(proj_dir) $::viv(proj_name).srcs sources_1 bd $name $name.bd]
    write_file $::viv(bd_path) "{\"design\": \"$name\"}"
}
proc get_files {args} {
    lassign [parse_opts $args {-quiet}] opts pos
    if {[dict exists $opts -filter]} { return "" }
    set out {}
    foreach f $pos {
        if {$::viv(bd) ne "" && ([file tail $f] eq "$::viv(bd).bd" || $f eq $::viv(bd_path))} {
            lappend out $::viv(bd_path)
        } else {
            lappend out $f
        }
    }
    return $out
}
proc make_wrapper {args} {
    lassign [parse_opts $args {-top -import}] opts pos
    set bd [dict get $opts -files]
    set name [file rootname [file tail $bd]]
    write_file [file join [file dirname $bd] hdl ${name}_wrapper.v] \
        "// fake Vivado wrapper\nmodule ${name}_wrapper();\nendmodule"
}
foreach cmd {create_bd_port create_bd_intf_port create_bd_pin create_bd_intf_pin connect_bd_net
             make_bd_pins_external make_bd_intf_pins_external get_bd_cells get_bd_pins get_bd_ports
             get_bd_intf_ports get_bd_nets get_bd_intf_nets apply_bd_automation
             save_bd_design validate_bd_design current_bd_instance delete_bd_objs regenerate_bd_layout
             generate_target set_false_path get_ports get_clocks get_cells get_nets opt_design place_design
             route_design phys_opt_design report_timing_summary report_power wait_on_run close_design
             create_ip_run create_fileset import_files reset_run} {
    proc $cmd {args} { return "" }
}
proc open_run {args} {}
proc launch_runs {args} {
    lassign [parse_opts $args] opts pos
    if {"impl_1" in $pos} {
        set top [expr {$::viv(top) ne "" ? $::viv(top) : "$::viv(bd)_wrapper"}]
        set runs [file join $::viv(proj_dir) $::viv(proj_name).runs impl_1]
        write_file [file join $runs $top.bit] "fake bitstream of $top for $::viv(part) ($::viv(board_part))"
        write_file [file join $runs ${top}_timing_summary_routed.rpt] [timing_summary]
        write_hwh [file join $::viv(proj_dir) $::viv(proj_name).gen sources_1 bd $::viv(bd) hw_handoff $::viv(bd).hwh]
    }
}
# report_timing_summary's layout after routing (its Design Timing Summary table, which FINN's parser
# reads); the WNS is FAKE_TOOLCHAIN_WNS (ns, default 0.250: timing met).
proc timing_summary {} {
    set wns [expr {[info exists ::env(FAKE_TOOLCHAIN_WNS)] ? $::env(FAKE_TOOLCHAIN_WNS) : 0.250}]
    set tns [expr {$wns < 0 ? $wns * 37 : 0.0}]
    set failing [expr {$wns < 0 ? 37 : 0}]
    set met [expr {$wns < 0 ? "Timing constraints are not met." : "All user specified timing constraints are met."}]
    set rule [string repeat - 96]
    return [join [list \
        "Timing Report" "" "| Tool Version : Vivado v.$::version (lin64) (fake toolchain)" \
        "| Design       : $::viv(bd)_wrapper" "| Device       : $::viv(part)" "" \
        $rule "| Design Timing Summary" "| ---------------------" $rule "" \
        "    WNS(ns)      TNS(ns)  TNS Failing Endpoints  TNS Total Endpoints      WHS(ns)      THS(ns)  THS Failing Endpoints  THS Total Endpoints     WPWS(ns)     TPWS(ns)  TPWS Failing Endpoints  TPWS Total Endpoints  " \
        "    -------      -------  ---------------------  -------------------      -------      -------  ---------------------  -------------------     --------     --------  ----------------------  --------------------  " \
        [format "   %8.3f     %8.3f  %21d  %19d     %8.3f     %8.3f  %21d  %19d     %8.3f     %8.3f  %22d  %20d  " \
            $wns $tns $failing 52310 0.011 0.000 0 52310 2.750 0.000 0 21874] \
        "" "" $met "" ""] "\n"]
}
proc out_path {opts pos} {
    if {[dict exists $opts -file]} { return [dict get $opts -file] }
    return [lindex $pos end]
}
proc write_verilog {args} {
    lassign [parse_opts $args {-force}] opts pos
    write_file [out_path $opts $pos] "// fake Vivado netlist"
}
proc write_checkpoint {args} {
    lassign [parse_opts $args {-force}] opts pos
    write_file [out_path $opts $pos] "fake checkpoint"
}
proc write_xdc {args} {
    lassign [parse_opts $args {-force}] opts pos
    write_file [out_path $opts $pos] "# fake constraints"
}
proc report_utilization {args} {
    lassign [parse_opts $args] opts pos
    if {[dict exists $opts -file]} {
        write_file [dict get $opts -file] "<?xml version=\"1.0\"?>\n<RptDoc><!-- fake utilization --></RptDoc>"
    }
}

namespace eval ipx {}
proc ipx::package_project {args} {
    lassign [parse_opts $args {-import_files}] opts pos
    set ::viv(ipx_root) [file normalize [dict get $opts -root_dir]]
    set ::viv(ipx_name) [dict get $opts -module]
    file mkdir $::viv(ipx_root)
}
proc ipx::save_core {args} {
    write_file [file join $::viv(ipx_root) component.xml] [component_xml xilinx_finn finn $::viv(ipx_name)]
}
proc ipx::current_core {args} { return core }
proc ipx::find_open_core {args} { return core }
foreach cmd {create_xgui_files get_bus_parameters get_bus_interfaces remove_segment get_address_spaces add_file_group
             add_file get_file_groups get_files remove_file remove_all_file remove_file_group add_address_block
             add_memory_map update_checksums add_bus_interface add_port_map add_bus_parameter infer_bus_interface
             associate_bus_interfaces} {
    proc ipx::$cmd {args} { return "" }
}

# ----------------------------------------------------------------------------- entry

proc version_line {} {
    switch -- $::tool {
        vivado { return "Vivado v$::version (64-bit)" }
        default { return "Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v$::version (64-bit)" }
    }
}

set script ""
for {set i 0} {$i < [llength $::targs]} {incr i} {
    set a [lindex $::targs $i]
    switch -- $a {
        -version - --version - -v { puts [version_line]; exit 0 }
        -source - -f - --tcl { incr i; set script [lindex $::targs $i] }
        -mode - --mode - -log - -journal { incr i }
        default { if {[string index $a 0] ne "-"} { set script $a } }
    }
}
if {$script eq ""} { fail "no Tcl script given (only batch mode is faked)" }
check_install
log_call [file normalize $script]
set ::argv {}
set ::argc 0
# A Tcl error ends the run as in a real tool's batch mode: "ERROR: ..." and a non-zero exit code.
if {[catch {source $script} msg]} {
    puts stderr "ERROR: \[fake $::tool\] $script: $msg"
    puts stderr $::errorInfo
    exit 1
}
exit 0
