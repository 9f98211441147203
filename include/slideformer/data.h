#pragma once
// slideformer's data layer (library slideformer::data): JPEG / PNG decoding, image datasets
// (ImageFolder), timm / torchvision transforms and a deterministic threaded loader. It depends on
// LibTorch alone (not on the operators or modules); see docs/data.md.
#include "slideformer/data/folder.h"
#include "slideformer/data/image.h"
#include "slideformer/data/loader.h"
#include "slideformer/data/moving_clips.h"
#include "slideformer/data/transforms.h"
