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


def output_memory_format(input: torch.Tensor) -> torch.memory_format:
    """The memory format of a conv's output: channels_last for an input that is channels_last
    (and not also plainly contiguous, as a tensor with one channel or one pixel is), else
    contiguous. Every backend and the fakes follow it, so a channels_last model stays so."""
    channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not input.is_contiguous() else torch.contiguous_format
