"""PyTorch oracle for LPIPS v0.1 as the released `lpips` 0.1.4 package computes it (richzhang/PerceptualSimilarity
`lpips/lpips.py`, `lpips/pretrained_networks.py`), without torchvision (which must not be installed here): our own
`features` Sequentials laid out as torchvision's `alexnet().features` / `vgg16().features` (same state-dict keys,
`features.0.weight`, ...), the `lin<k>.model.1.weight` heads, NCHW. Also writers of files in the layouts of
torchvision's `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` and of the package's `weights/v0.1/{alex,vgg}.pth`.
Tests only."""
import torch
from torch import nn

# where upstream's five slices end in `features` (slice k = features[ends[k-1]:ends[k]])
SLICE_ENDS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# torchvision's classifier Linear layers: Sequential index -> (out, in) of the released files
CLASSIFIER = {"alex": {1: (4096, 256 * 6 * 6), 4: (4096, 4096), 6: (1000, 4096)},
              "vgg": {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}}


def alexnet_features() -> nn.Sequential:
    """torchvision `alexnet().features` (13 modules; the final MaxPool 12 is not used by LPIPS)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


def vgg16_features() -> nn.Sequential:
    """torchvision `vgg16().features` (configuration D: 31 modules; the final MaxPool 30 is not used by LPIPS)."""
    layers, in_ch = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


FEATURES = {"alex": alexnet_features, "vgg": vgg16_features}


class NetLinLayer(nn.Module):
    """lpips' head: Dropout then a 1x1 conv C -> 1 without bias (keys `model.1.weight`)."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


def normalize_tensor(f, eps=1e-10):
    return f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """lpips.LPIPS(net=backbone, version='0.1', lpips=True, spatial=False) in eval mode: forward(in0, in1) with NCHW
    images in [-1, 1] -> (N, 1, 1, 1); retPerLayer=True also returns the five (N, 1, 1, 1) terms."""

    def __init__(self, backbone="alex"):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])
        self.features = FEATURES[backbone]()
        for k, c in enumerate(CHANNELS[backbone]):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.eval()

    def taps(self, x):
        """The five slice outputs of upstream's `pretrained_networks.alexnet/vgg16.forward`."""
        outs, start = [], 0
        for end in SLICE_ENDS[self.backbone]:
            for i in range(start, end):
                x = self.features[i](x)
            outs.append(x)
            start = end
        return outs

    def forward(self, in0, in1, retPerLayer=False):
        outs0 = self.taps((in0 - self.shift) / self.scale)
        outs1 = self.taps((in1 - self.shift) / self.scale)
        res = []
        for k, (a, b) in enumerate(zip(outs0, outs1)):
            diff = (normalize_tensor(a) - normalize_tensor(b)) ** 2
            res.append(getattr(self, f"lin{k}")(diff).mean([2, 3], keepdim=True))
        val = 0
        for r in res:
            val = val + r
        return (val, res) if retPerLayer else val

    def heads_state_dict(self):
        """The layout of the package's `weights/v0.1/<backbone>.pth`: lin<k>.model.1.weight (1, C, 1, 1)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("lin")}

    def backbone_state_dict(self, classifier_shapes=None):
        """The layout of torchvision's `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth`: features.<i>.weight/bias
        and classifier.<i>.weight/bias (random; `classifier_shapes` {index: (out, in)}, default the released
        sizes)."""
        sd = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        g = torch.Generator().manual_seed(0)
        for i, (out, inp) in (classifier_shapes or CLASSIFIER[self.backbone]).items():
            sd[f"classifier.{i}.weight"] = torch.randn(out, inp, generator=g) * 0.01
            sd[f"classifier.{i}.bias"] = torch.zeros(out)
        return sd


def build(backbone="alex", seed=0):
    """Random LPIPS: convs He-normal (the scale of trained features survives the depth) with small biases, heads
    U(0, 0.2) (non-negative like the released ones)."""
    torch.manual_seed(seed)
    net = LPIPS(backbone)
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2 / fan_in) ** 0.5)
                m.bias.uniform_(-0.1, 0.1)
        for k in range(len(CHANNELS[backbone])):
            getattr(net, f"lin{k}").model[1].weight.uniform_(0, 0.2)
    return net


def small_classifier(backbone):
    """The classifier keys of the released file with tiny shapes (the converter ignores classifier.*; the released
    (4096, 25088) etc. would write 230-530 MB per test)."""
    return {i: (8, 4) for i in CLASSIFIER[backbone]}
