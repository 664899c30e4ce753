#pragma once
/// \file
/// Umbrella header: Dims, tensors, every op (attention included), autograd, autocast and safetensors I/O (modules: dimx/nn.h,
/// optimizers: dimx/optim.h).
#include <dimx/attention.h>
#include <dimx/autocast.h>
#include <dimx/autograd.h>
#include <dimx/device.h>
#include <dimx/conv.h>
#include <dimx/dim.h>
#include <dimx/dtype.h>
#include <dimx/elementwise.h>
#include <dimx/ema.h>
#include <dimx/error.h>
#include <dimx/io.h>
#include <dimx/loss.h>
#include <dimx/matmul.h>
#include <dimx/normalization.h>
#include <dimx/profile.h>
#include <dimx/random.h>
#include <dimx/reduce.h>
#include <dimx/runtime.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>
#include <dimx/tensor.h>
#include <dimx/wkv.h>
