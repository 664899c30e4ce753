#pragma once
/// \file
/// Umbrella header for modules and layers: the module machinery (named parameters, train/eval,
/// reset, describe, load/save by name) and the basic layers.
#include <dimx/dimx.h>
#include <dimx/autograd.h>
#include <dimx/io.h>
#include <dimx/nn/activation.h>
#include <dimx/nn/attention.h>
#include <dimx/nn/beats.h>
#include <dimx/nn/torchscale.h>
#include <dimx/nn/positional_encoding.h>
#include <dimx/nn/rwkv.h>
#include <dimx/nn/self_attention.h>
#include <dimx/nn/causal_self_attention.h>
#include <dimx/nn/cross_attention.h>
#include <dimx/nn/rel_pos_self_attention.h>
#include <dimx/nn/dropout.h>
#include <dimx/nn/embedding.h>
#include <dimx/nn/layer_norm.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/mega.h>
#include <dimx/nn/module.h>
