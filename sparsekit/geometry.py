"""Output shapes and memory formats of the ops, shared by every backend and by their fakes."""

import torch


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def block_conv2d_shape(input_shape, out_channels, kernel_size, stride, padding, dilation) -> list:
    """``[N, out_channels, OH, OW]`` of a convolution of an ``[N, C, H, W]`` input."""
    sizes = [
        conv_output_size(input_shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i])
        for i in range(2)
    ]
    return [input_shape[0], out_channels, *sizes]


def block_linear_shape(input_shape, out_features) -> list:
    return [*input_shape[:-1], out_features]


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last, read as torch's conv reads it: a tensor contiguous in
    both formats (one channel or one pixel) counts as channels_last when its strides say so,
    as a channels_last [O, 1, kh, kw] weight's do."""
    if t.dim() != 4 or not t.is_contiguous(memory_format=torch.channels_last):
        return False
    return not t.is_contiguous() or t.stride(1) < t.stride(2)


def output_memory_format(input: torch.Tensor) -> torch.memory_format:
    """The memory format of a conv's output: channels_last for a channels_last input, else
    contiguous. Every backend and the fakes follow it, so a channels_last model stays so."""
    return torch.channels_last if is_channels_last(input) else torch.contiguous_format
