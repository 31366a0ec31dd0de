"""Vivado hardware handoff (.hwh) files shaped like the block design FINN's MakeZYNQProject builds.

PYNQ names a design's IPs from its .hwh, so the pynq backend's tests need .hwh files the real
parsers read the way they read FINN's. The layout follows Vivado's output (PYNQ's own base.hwh
files): ``EDKSYSTEM`` with ``SYSTEMINFO``, ``EXTERNALPORTS``, ``EXTERNALINTERFACES`` and ``MODULES``;
each ``MODULE`` with ``ADDRESSBLOCKS`` (its slave windows), ``PARAMETERS``, ``PORTS`` (every signal
with its net and ``CONNECTIONS``), ``BUSINTERFACES`` (``PORTMAPS`` from logical to physical
signals) and, on bus masters, a ``MEMORYMAP`` of ``MEMRANGE``s. The design is FINN's
(``finn/transformation/fpgadataflow/templates.py`` and ``make_zynq_proj.py``): the PS ``zynq_ps``
(``zynq_ultra_ps_e`` on UltraScale+, ``processing_system7`` on Zynq-7000), ``axi_interconnect_0``
from the PS's AXI master to every AXI-lite slave, ``smartconnect_0`` from the IODMAs' ``m_axi_gmem0``
to the PS's HP0 port, the IODMA partitions (``idma<k>``/``odma<k>``, one ``s_axi_control_0`` each)
and the other partitions (``StreamingDataflowPartition_<k>``, ``s_axilite_<j>`` per AXI-lite
interface, as CreateStitchedIP names them). Addresses are FINN's ``assign_axi_addr_proc``: from
0xA0000000 (UltraScale+) or 0x40000000 (Zynq-7000) in graph order, each window the larger of
4 KiB and ``2**ADDR_WIDTH``, aligned to its size. The clocking wizard and reset block are left out:
no parser reads them, so every clock comes from the PS's PL clock.
"""

import collections
import json
import sys
import xml.etree.ElementTree as ET

# A design: cores in FINN's graph order. ``slaves`` are (interface, ADDR_WIDTH); ``dma`` says the
# core masters DDR through m_axi_gmem0.
Core = collections.namedtuple("Core", "instance vlnv slaves dma")

# (logical name, driven by the master, width) of an AXI4-Lite link: FINN's AXI-lite interfaces
# and the PS's general-purpose ports carry these; the full AXI4 signals of the DMA links add
# nothing any parser reads.
AXI_SIGNALS = (("AWADDR", True, 32), ("AWVALID", True, 1), ("AWREADY", False, 1), ("WDATA", True, 32),
               ("WSTRB", True, 4), ("WVALID", True, 1), ("WREADY", False, 1), ("BRESP", False, 2),
               ("BVALID", False, 1), ("BREADY", True, 1), ("ARADDR", True, 32), ("ARVALID", True, 1),
               ("ARREADY", False, 1), ("RDATA", False, 32), ("RRESP", False, 2), ("RVALID", False, 1),
               ("RREADY", True, 1))


def _pl_clocks(enable, settings):
    """The PS's four PL clocks as Vivado records them, enabled or not: ``enable`` and ``settings`` are
    parameter names with ``%d`` for the clock; only the first is enabled, as in FINN's template."""
    out = {}
    for i in range(4):
        out[enable % i] = "1" if i == 0 else "0"
        out.update({name % i: value for name, value in settings.items()})
    return out


# PL0 at 100 MHz from the RPLL (values from a ZCU104 design)
_ULTRASCALE_CLOCK = {"PSU__CRL_APB__PL%d_REF_CTRL__DIVISOR0": "15", "PSU__CRL_APB__PL%d_REF_CTRL__DIVISOR1": "1",
                     "PSU__CRL_APB__PL%d_REF_CTRL__SRCSEL": "RPLL",
                     "PSU__CRL_APB__PL%d_REF_CTRL__ACT_FREQMHZ": "99.999001"}
# FCLK0 at 100 MHz from the IO PLL (values from a Pynq-Z2 design)
_ZYNQ_CLOCK = {"PCW_FCLK%d_PERIPHERAL_DIVISOR0": "5", "PCW_FCLK%d_PERIPHERAL_DIVISOR1": "2",
               "PCW_FCLK%d_PERIPHERAL_CLKSRC": "IO PLL", "PCW_ACT_FPGA%d_PERIPHERAL_FREQMHZ": "100.000000"}


ZYNQ = {
    "zynq_us+": dict(modtype="zynq_ultra_ps_e", vlnv="xilinx.com:ip:zynq_ultra_ps_e:3.5", arch="zynquplus",
                     device="xck26", package="sfvc784", speed="-2LV", master="M_AXI_HPM0_FPD", slave="S_AXI_HP0_FPD",
                     clock="pl_clk0", base=0xA0000000, ddr=("HP0_DDR_LOW", 0x0, 0x7FFFFFFF),
                     clocks=_pl_clocks("PSU__FPGA_PL%d_ENABLE", _ULTRASCALE_CLOCK)),
    "zynq_7000": dict(modtype="processing_system7", vlnv="xilinx.com:ip:processing_system7:5.5", arch="zynq",
                      device="7z020", package="clg400", speed="-1", master="M_AXI_GP0", slave="S_AXI_HP0",
                      clock="FCLK_CLK0", base=0x40000000, ddr=("HP0_DDR_LOWOCM", 0x0, 0x1FFFFFFF),
                      clocks=_pl_clocks("PCW_FPGA_FCLK%d_ENABLE", _ZYNQ_CLOCK)),
}


def addr_width(nbytes):
    """The ADDR_WIDTH of an AXI-lite interface whose memory holds ``nbytes``."""
    return max(int(nbytes) - 1, 1).bit_length()


def window_size(width):
    """The window assign_axi_addr_proc gives an interface of ADDR_WIDTH ``width``: at least 4 KiB."""
    return max(4096, 2 ** width)


def iodma(instance, partition):
    """An IODMA partition as MakeZYNQProject instantiates it: ``instance`` (idma0, odma0, ...) of the
    stitched IP of ``partition`` (StreamingDataflowPartition_<k>)."""
    return Core(instance, "xilinx_finn:finn:%s:1.0" % partition, [("s_axi_control_0", 6)], True)


def partition(name, window_bytes):
    """A partition whose AXI-lite interfaces (``s_axilite_0``, ...) front memories of these sizes."""
    return Core(name, "xilinx_finn:finn:%s:1.0" % name,
                [("s_axilite_%d" % j, addr_width(n)) for j, n in enumerate(window_bytes)], False)


def _el(parent, tag, **attrs):
    # Vivado writes every element's attributes in alphabetical order
    return ET.SubElement(parent, tag, dict(sorted(attrs.items())))


class _Design:
    def __init__(self):
        # instance -> [attributes, parameters, address blocks, ports, bus interfaces, memory ranges]
        self.modules = {}

    def module(self, instance, vlnv, modtype=None, modclass="PERIPHERAL", params=(), ps=False):
        attrs = dict(COREREVISION="1", FULLNAME="/" + instance, HWVERSION=vlnv.split(":")[3], INSTANCE=instance,
                     IPTYPE="BUS" if modclass == "BUS" else "PERIPHERAL", IS_ENABLE="1",
                     MODTYPE=modtype or vlnv.split(":")[2], VLNV=vlnv)
        attrs.update(dict(CONFIGURABLE="TRUE", IS_PL="FALSE") if ps else dict(MODCLASS=modclass))
        self.modules[instance] = [attrs, list(params), [], [], [], []]

    def port(self, instance, connections, **attrs):
        self.modules[instance][3].append((attrs, connections))

    def link(self, master, m_intf, slave, s_intf, protocol, addr_width=32):
        """An AXI link: both bus interfaces and every signal's net, as Vivado writes them."""
        bus = "%s_%s" % (master, m_intf)
        for instance, intf, other, other_intf, kind in ((master, m_intf, slave, s_intf, "MASTER"),
                                                        (slave, s_intf, master, m_intf, "SLAVE")):
            portmaps = []
            for sig, from_master, width in AXI_SIGNALS:
                width = addr_width if sig.endswith("ADDR") else width
                vector = dict(LEFT=str(width - 1), RIGHT="0") if width > 1 else {}
                name = "%s_%s" % (intf, sig.lower())
                self.port(instance, [(other, "%s_%s" % (other_intf, sig.lower()))], NAME=name, SIGIS="undef",
                          DIR="O" if from_master == (kind == "MASTER") else "I",
                          SIGNAME="%s_%s" % (bus, sig.lower()), **vector)
                portmaps.append((sig, name))
            params = [("ADDR_WIDTH", str(addr_width)), ("DATA_WIDTH", "32"), ("PROTOCOL", protocol)]
            self.modules[instance][4].append((dict(BUSNAME=bus, DATAWIDTH="32", NAME=intf, TYPE=kind,
                                                   VLNV="xilinx.com:interface:aximm:1.0"), params, portmaps))

    def memrange(self, master, m_intf, slave, s_intf, block, base, high, memtype):
        self.modules[master][5].append(dict(
            ADDRESSBLOCK=block, BASENAME="C_BASEADDR", BASEVALUE="0x%08X" % base, HIGHNAME="C_HIGHADDR",
            HIGHVALUE="0x%08X" % high, INSTANCE=slave, IS_DATA="TRUE", IS_INSTRUCTION="TRUE",
            MASTERBUSINTERFACE=m_intf, MEMTYPE=memtype, SLAVEBUSINTERFACE=s_intf))

    def xml(self, name, zynq):
        root = ET.Element("EDKSYSTEM", EDWVERSION="1.2", TIMESTAMP="Mon Dec  7 00:00:00 2026", VIVADOVERSION="2024.2")
        _el(root, "SYSTEMINFO", ARCH=zynq["arch"], DEVICE=zynq["device"], NAME=name, PACKAGE=zynq["package"],
            SPEEDGRADE=zynq["speed"])
        _el(root, "EXTERNALPORTS")
        _el(root, "EXTERNALINTERFACES")
        modules = _el(root, "MODULES")
        for attrs, params, blocks, ports, intfs, memmap in self.modules.values():
            mod = _el(modules, "MODULE", **attrs)
            _el(mod, "DOCUMENTS")
            if blocks:
                abs_ = _el(mod, "ADDRESSBLOCKS")
                for intf, size in blocks:
                    _el(abs_, "ADDRESSBLOCK", ACCESS="read-write", INTERFACE=intf, NAME="Reg", RANGE=str(size),
                        USAGE="register")
            pars = _el(mod, "PARAMETERS")
            for k, v in params:
                _el(pars, "PARAMETER", NAME=k, VALUE=v)
            pts = _el(mod, "PORTS")
            for pattrs, connections in ports:
                cons = _el(_el(pts, "PORT", **pattrs), "CONNECTIONS")
                for inst, port in connections:
                    _el(cons, "CONNECTION", INSTANCE=inst, PORT=port)
            bis = _el(mod, "BUSINTERFACES")
            for battrs, bparams, portmaps in intfs:
                bi = _el(bis, "BUSINTERFACE", **battrs)
                for k, v in bparams:
                    _el(bi, "PARAMETER", NAME=k, VALUE=v)
                pms = _el(bi, "PORTMAPS")
                for logical, physical in portmaps:
                    _el(pms, "PORTMAP", LOGICAL=logical, PHYSICAL=physical)
            if memmap:
                mm = _el(mod, "MEMORYMAP")
                for r in memmap:
                    _el(mm, "MEMRANGE", **r)
        ET.indent(root)
        header = '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n'
        return header + ET.tostring(root, encoding="unicode") + "\n"


def finn_hwh(cores, zynq="zynq_us+", name="top"):
    """The .hwh text of FINN's block design around ``cores`` (``iodma``/``partition``, in graph order),
    and the windows its address map assigns: {(instance, interface): (base address, size in bytes)}."""
    z = ZYNQ[zynq]
    d = _Design()
    d.module("zynq_ps", z["vlnv"], z["modtype"], params=sorted(z["clocks"].items()), ps=True)
    slaves = [(c, intf, aw) for c in cores for intf, aw in c.slaves]
    masters = [c for c in cores if c.dma]
    d.module("axi_interconnect_0", "xilinx.com:ip:axi_interconnect:2.1", modclass="BUS",
             params=[("NUM_MI", str(len(slaves))), ("NUM_SI", "1")])
    d.module("smartconnect_0", "xilinx.com:ip:smartconnect:1.0", modclass="BUS",
             params=[("NUM_MI", "1"), ("NUM_SI", str(len(masters)))])
    for c in cores:
        d.module(c.instance, c.vlnv, params=[("Component_Name", "top_%s_0" % c.instance)])
        d.modules[c.instance][2].extend((intf, window_size(aw)) for intf, aw in c.slaves)
    clock = ("zynq_ps", z["clock"])
    sinks = [("axi_interconnect_0", "ACLK"), ("smartconnect_0", "aclk")] + [(c.instance, "ap_clk") for c in cores]
    d.port("zynq_ps", sinks, CLKFREQUENCY="100000000", DIR="O", NAME=clock[1], SIGIS="clk",
           SIGNAME="zynq_ps_" + clock[1])
    for inst, port in sinks:
        d.port(inst, [clock], CLKFREQUENCY="100000000", DIR="I", NAME=port, SIGIS="clk", SIGNAME="zynq_ps_" + clock[1])
    d.link("zynq_ps", z["master"], "axi_interconnect_0", "S00_AXI", "AXI4", 40 if zynq == "zynq_us+" else 32)
    d.link("smartconnect_0", "M00_AXI", "zynq_ps", z["slave"], "AXI4", 49 if zynq == "zynq_us+" else 32)
    windows, base = {}, z["base"]
    for i, (c, intf, aw) in enumerate(slaves):
        d.link("axi_interconnect_0", "M%02d_AXI" % i, c.instance, intf, "AXI4LITE", aw)
        size = window_size(aw)
        base = (base + size - 1) & ~(size - 1)
        windows[(c.instance, intf)] = (base, size)
        d.memrange("zynq_ps", z["master"], c.instance, intf, "Reg", base, base + size - 1, "REGISTER")
        base += size
    for i, c in enumerate(masters):
        d.link(c.instance, "m_axi_gmem0", "smartconnect_0", "S%02d_AXI" % i, "AXI4", 64)
        block, low, high = z["ddr"]
        d.memrange(c.instance, "m_axi_gmem0", "zynq_ps", z["slave"], block, low, high, "MEMORY")
    return d.xml(name, z), windows


def main(design_path, hwh_path):
    """The fake Vivado's hardware handoff (tests/build_fpga/fake_toolchain): the .hwh of the block design it
    recorded from FINN's scripts (``design_path``, JSON: name, zynq, cores with their address segments as
    FINN's assign_axi_addr_proc placed them), laid out by ``finn_hwh``, whose address map must agree."""
    with open(design_path, encoding="utf-8") as f:
        design = json.load(f)
    cores = [Core(c["instance"], c["vlnv"], [(intf, addr_width(size)) for intf, _, size in c["slaves"]], c["dma"])
             for c in design["cores"]]
    text, windows = finn_hwh(cores, design["zynq"], design["name"])
    placed = {(c["instance"], intf): (base, size) for c in design["cores"] for intf, base, size in c["slaves"]}
    if windows != placed:
        sys.exit("finn_hwh: FINN's script placed the AXI-lite windows at %s, finn_hwh at %s" % (placed, windows))
    with open(hwh_path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main(*sys.argv[1:])
