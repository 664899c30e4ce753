#pragma once
// Umbrella header: Dims, tensors and every op.
#include <dimx/device.h>
#include <dimx/dim.h>
#include <dimx/dtype.h>
#include <dimx/elementwise.h>
#include <dimx/error.h>
#include <dimx/matmul.h>
#include <dimx/random.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>
#include <dimx/tensor.h>
