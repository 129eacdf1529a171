"""Output shapes of the ops, shared by every backend's fake (meta) implementation."""


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


def block_conv2d_fake(input, values, row_idx, col_idx, block_ptr, out_channels, kernel_size,
                      stride, padding, dilation, groups, bias, relu):
    """The fake (meta) implementation of every backend's ``block_conv2d`` op."""
    return input.new_empty(
        block_conv2d_shape(input.shape, out_channels, kernel_size, stride, padding, dilation)
    )


def block_linear_fake(input, values, row_idx, col_idx, block_ptr, out_features, bias, relu):
    """The fake (meta) implementation of every backend's ``block_linear`` op."""
    return input.new_empty(block_linear_shape(input.shape, out_features))
