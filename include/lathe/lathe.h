// Umbrella header: #include <lathe/lathe.h> gives the whole public API.
#pragma once

#include "lathe/core/autograd.h"
#include "lathe/core/device.h"
#include "lathe/core/dtype.h"
#include "lathe/core/error.h"
#include "lathe/core/functional.h"
#include "lathe/core/op_table.h"
#include "lathe/core/random.h"
#include "lathe/core/shape.h"
#include "lathe/core/tensor.h"
#include "lathe/core/tensor_options.h"
#include "lathe/core/threading.h"
#include "lathe/data/batching.h"
#include "lathe/data/dataset.h"
#include "lathe/data/tokenizer.h"
#include "lathe/io/safetensors.h"
#include "lathe/nn/bert_config.h"
