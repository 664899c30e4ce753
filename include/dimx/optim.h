#pragma once
/// \file
/// Umbrella header: optimizers (SGD, Adam, AdamW) and gradient clipping, with PyTorch semantics.
#include <dimx/optim/adam.h>
#include <dimx/optim/clip.h>
#include <dimx/optim/optimizer.h>
#include <dimx/optim/sgd.h>
