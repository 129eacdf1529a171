"""Reference architectures, built without torchvision (which has no CPU build for this torch).

``create(name)`` returns a fresh, randomly initialised model; ``INPUT_SHAPES[name]`` is the
``(C, H, W)`` it takes. CIFAR models (32x32, 10 classes): ``resnet18`` (module names as in
Structure-LTH: ``layer3.0.conv1``, ``layer2.0.downsample.0``), ``vgg16_bn``, ``wrn32_2`` and
``mobilenet_v1``; ImageNet (224x224, 1000 classes): ``resnet50``.

``calibrate_batchnorm(model, batches)`` gives a model the BatchNorm statistics training would:
a freshly initialised model, once masked, otherwise passes on activations that all but vanish
in its deep layers, and its output hardly depends on its input.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .compiler.reference import dense_masked_copy
from .errors import SparsekitError
from .masks import collect_masks

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # a BatchNorm's buffers


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes * 4, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 conv, no pooling) or an ImageNet stem (7x7/2 + max pool)."""

    def __init__(self, block, blocks, widths, num_classes: int, imagenet_stem: bool):
        super().__init__()
        stem = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else nn.Identity()
        cin = stem
        for i, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(count):
                layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.stages = len(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, config=VGG16, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*_conv_bn(cin, item, 3), nn.ReLU()]
                cin = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class MobileNetV1(nn.Module):
    """MobileNet-v1 for 32x32 inputs: a 3x3 stem, then depthwise-separable blocks."""

    BLOCKS = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 32, 3)
        blocks, cin = [], 32
        for item in self.BLOCKS:
            cout, stride = item if isinstance(item, tuple) else (item, 1)
            depthwise, bn_dw = _conv_bn(cin, cin, 3, stride, groups=cin)
            pointwise, bn_pw = _conv_bn(cin, cout, 1)
            blocks.append(nn.Sequential(depthwise, bn_dw, nn.ReLU(), pointwise, bn_pw, nn.ReLU()))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, imagenet_stem=False)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, imagenet_stem=True)


def wrn32_2(num_classes: int = 10) -> ResNet:
    """Wide ResNet-32-2: the CIFAR ResNet-32 (3 stages of 5 basic blocks) at twice the width."""
    return ResNet(BasicBlock, [5, 5, 5], [32, 64, 128], num_classes, imagenet_stem=False)


def vgg16_bn(num_classes: int = 10) -> VGG:
    return VGG(VGG16, num_classes)


def mobilenet_v1(num_classes: int = 10) -> MobileNetV1:
    return MobileNetV1(num_classes)


MODELS = {
    "resnet18": resnet18,
    "vgg16_bn": vgg16_bn,
    "wrn32_2": wrn32_2,
    "mobilenet_v1": mobilenet_v1,
    "resnet50": resnet50,
}
INPUT_SHAPES = {name: (3, 32, 32) for name in MODELS} | {"resnet50": (3, 224, 224)}


def create(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise SparsekitError(f"model: {name!r} is not one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def calibrate_batchnorm(model: nn.Module, batches, masks=None) -> nn.Module:
    """Sets every BatchNorm's running mean and variance, in place, to the averages of what it
    sees over ``batches`` (input tensors, or tuples of positional inputs); with ``masks`` (any
    form ``sparsekit.compile`` takes), what it sees in the masked model, the model's weights
    left as they are. Returns the model in eval mode."""
    target = model if masks is None else dense_masked_copy(model, collect_masks(model, masks))
    norms = [m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    target.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    try:
        with torch.no_grad():
            for batch in batches:
                target(*(batch if isinstance(batch, tuple) else (batch,)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()
    if target is not model:
        statistics = {
            k: v for k, v in target.state_dict().items() if k.rpartition(".")[2] in STATISTICS
        }
        model.load_state_dict(statistics, strict=False)
    return model.eval()
