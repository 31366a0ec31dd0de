"""Network presets: the binary AlexNet family as plain data.

A preset lists the five conv layers and two hidden FC layers of AlexNet with their geometry;
the classifier (``fc3``) is added for the task at hand. Layer names are fixed (``conv1`` ..
``conv5``, ``fc1``, ``fc2``, ``fc3``) because the cut point, checkpoints and the exported graph
refer to them.

Padding: the first conv sees uint8 pixels and pads with 0 (a black border, representable in
UINT8). Convs on binary feature maps pad with -1, the value of the 0 bit, because a binary
stream has no zero: FINN's padding unit inserts 0 bits, so this is the only padding every stage
can agree on. ``tiny``, ``small`` and ``z2`` avoid binary padding altogether.
"""

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

from bnn_transfer.host.errors import BnnError


@dataclass(frozen=True)
class ConvSpec:
    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: Optional[Tuple[int, int]] = None  # (kernel, stride) of the max pool after the activation


@dataclass(frozen=True)
class FCSpec:
    name: str
    out_features: int


@dataclass(frozen=True)
class Preset:
    name: str
    input_size: int
    convs: Tuple[ConvSpec, ...]
    fcs: Tuple[FCSpec, ...]
    num_classes: int  # of the pretraining task; fine-tuning replaces the classifier

    @property
    def layer_names(self):
        return tuple(c.name for c in self.convs) + tuple(f.name for f in self.fcs) + ("fc3",)

    def geometry(self):
        """(channels, height, width) after each conv block, and the flattened width."""
        ch, size, out = 3, self.input_size, []
        for c in self.convs:
            size = (size + 2 * c.padding - c.kernel) // c.stride + 1
            if c.pool is not None:
                k, s = c.pool
                size = (size - k) // s + 1
            if size < 1:
                raise BnnError("preset %s: %s leaves no spatial extent" % (self.name, c.name))
            ch = c.out_channels
            out.append((ch, size, size))
        return out, ch * size * size

    def weight_count(self):
        """Conv and FC weights (no biases, no BatchNorm), as AlexNet counts are quoted."""
        n, ch = 0, 3
        for c in self.convs:
            n += c.out_channels * ch * c.kernel * c.kernel
            ch = c.out_channels
        width = self.geometry()[1]
        for f in self.fcs + (FCSpec("fc3", self.num_classes),):
            n += width * f.out_features
            width = f.out_features
        return n

    def to_dict(self):
        return asdict(self)

    @staticmethod
    def from_dict(d):
        return Preset(
            name=d["name"],
            input_size=int(d["input_size"]),
            convs=tuple(ConvSpec(**{**c, "pool": tuple(c["pool"]) if c.get("pool") else None}) for c in d["convs"]),
            fcs=tuple(FCSpec(**f) for f in d["fcs"]),
            num_classes=int(d["num_classes"]),
        )


def _alexnet(name, input_size, widths, fc, conv1, pools, pads, kernels, num_classes):
    convs = tuple(
        ConvSpec("conv%d" % (i + 1), w, k, conv1 if i == 0 else 1, p, pool)
        for i, (w, k, p, pool) in enumerate(zip(widths, kernels, pads, pools))
    )
    return Preset(name, input_size, convs, (FCSpec("fc1", fc[0]), FCSpec("fc2", fc[1])), num_classes)


PRESETS = {
    # AlexNet (Krizhevsky et al. 2012) without grouped convolutions: 62.4M weights.
    "paper": _alexnet(
        "paper", 224, (96, 256, 384, 384, 256), (4096, 4096), conv1=4,
        pools=((3, 2), (3, 2), None, None, (3, 2)), pads=(2, 2, 1, 1, 1), kernels=(11, 5, 3, 3, 3),
        num_classes=1000,
    ),
    # Sized for a Pynq-Z2 (xc7z020) with FINN's margins; stride-2 first conv keeps fc1 small.
    "z2": _alexnet(
        "z2", 112, (64, 128, 192, 192, 128), (512, 512), conv1=2,
        pools=((2, 2), (2, 2), None, None, (2, 2)), pads=(0, 0, 0, 0, 0), kernels=(3, 3, 3, 3, 3),
        num_classes=1000,
    ),
    # 32x32, trains in minutes on 2 CPU cores: tests and the demo.
    "tiny": _alexnet(
        "tiny", 32, (32, 64, 96, 96, 128), (256, 256), conv1=1,
        pools=((2, 2), (2, 2), None, None, None), pads=(1, 0, 0, 0, 0), kernels=(3, 3, 3, 3, 3),
        num_classes=24,
    ),
    # tiny's input and first four convs; conv5 keeps conv4's 3 x 3 map (a 1 x 1 kernel: 1,152 bits into
    # fc1 instead of 128) and the FC layers are 1,024 wide. The demo's: features that transfer to real
    # scans (issue 15, bench transfer/digits), at 6.5x tiny's weights.
    "small": _alexnet(
        "small", 32, (32, 64, 96, 96, 128), (1024, 1024), conv1=1,
        pools=((2, 2), (2, 2), None, None, None), pads=(1, 0, 0, 0, 0), kernels=(3, 3, 3, 3, 1),
        num_classes=24,
    ),
}


def presets_table():
    """The presets as the markdown table README.md shows (checked against it by the tests)."""
    lines = ["| preset | input | conv channels | kernels | conv1 stride | padding | pools (kernel/stride) | FC "
             "| weights |", "|---|---|---|---|---|---|---|---|---|"]
    for p in PRESETS.values():
        pools = ", ".join("%s %d/%d" % (c.name, c.pool[0], c.pool[1]) for c in p.convs if c.pool)
        lines.append("| `%s` | %d | %s | %s | %d | %s | %s | %s | %s |" % (
            p.name, p.input_size, "-".join(str(c.out_channels) for c in p.convs),
            "-".join(str(c.kernel) for c in p.convs), p.convs[0].stride,
            "-".join(str(c.padding) for c in p.convs), pools,
            "-".join(str(f.out_features) for f in p.fcs), f"{p.weight_count():,}"))
    return "\n".join(lines) + "\n"


def get_preset(name, num_classes=None):
    try:
        p = PRESETS[name]
    except KeyError:
        raise BnnError("unknown preset %r (choose from %s)" % (name, ", ".join(PRESETS))) from None
    if num_classes is not None and num_classes != p.num_classes:
        p = Preset(p.name, p.input_size, p.convs, p.fcs, int(num_classes))
    return p
