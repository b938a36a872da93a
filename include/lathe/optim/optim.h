// The optim module: optimizers, parameter groups, gradient clipping, lr schedules, state I/O,
// dynamic loss scaling for mixed precision.
#pragma once

#include "lathe/optim/fused_adamw.h"
#include "lathe/optim/grad_scaler.h"
#include "lathe/optim/optimizer.h"
#include "lathe/optim/param_groups.h"
#include "lathe/optim/scheduler.h"
