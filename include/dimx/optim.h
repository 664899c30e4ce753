#pragma once
/// \file
/// Umbrella header: optimizers (SGD, Adam, AdamW), gradient clipping and loss scaling, with
/// PyTorch semantics.
#include <dimx/optim/adam.h>
#include <dimx/optim/clip.h>
#include <dimx/optim/grad_scaler.h>
#include <dimx/optim/optimizer.h>
#include <dimx/optim/sgd.h>
