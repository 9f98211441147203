// Fuzz target: every public schema of the operator library (slideformer::*, the _forward and
// _backward ones included), called through the dispatcher with arguments decoded from the bytes.
// Each tensor argument is by default of the shape its name asks for (query, key, value, output,
// grad_output, logsumexp, attn_bias, key_bias, shift_weight, shift_bias) for shared sizes the input
// picks, including 0 (slide_attention_nd: maps of 1 to 3 axes, per-axis kernel sizes); the input then perturbs it: a dimension off by one, zero or huge, a rank
// one off, another dtype or device, transposed, sliced or expanded (stride 0) strides, NaN and
// Inf values, undefined. Ints and int lists (kernel_size, dilation), the border, the scale and the
// flags come from boundary values. Large sizes go to meta tensors, so only the shape checks see them; CPU
// tensors stay small enough to compute. The public (differentiable) ops run backward too when an
// input requires grad.
//
// Findings (the program aborts, naming the op): a crash or sanitizer report; a refusal that is
// not the operators' own (a c10::Error whose message does not start "slideformer::": an internal
// assert, an index error, a refusal of some ATen op the kernels call) or any other exception; and,
// where every tensor is on the CPU and the call succeeds, a disagreement of two oracles with the
// CPU kernels: the Meta kernels must give the outputs' shapes and dtypes, and the CUDA kernels
// executed on the host (tests/cuda_host) the same values, where the CPU results are finite and
// the tensors small (kMaxHostExecutionElements).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cuda_host.h"
#include "fuzz_input.h"

namespace {

using slideformer::fuzz::FuzzInput;

constexpr int64_t kHuge = int64_t{1} << 40;
constexpr int64_t kMaxCpuElements = 1 << 15;
// The host-executed CUDA kernels run a fiber per CUDA thread and fill each block's shared memory
// (up to 163 KB) anew, so their cost grows with the blocks: they check the inputs whose tensors
// have at most this many elements (still several tiles, channel chunks and key blocks), which
// keeps the target at a few hundred executions per second under AddressSanitizer.
constexpr int64_t kMaxHostExecutionElements = 1 << 12;

std::vector<c10::OperatorHandle> public_schemas() {
  std::vector<c10::OperatorHandle> ops;
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("slideformer::", 0) == 0) ops.push_back(c10::Dispatcher::singleton().findOp(name).value());
  }
  std::sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) {
    return a.operator_name().name < b.operator_name().name;
  });
  return ops;
}

// The sizes every tensor argument shares by default; slide_attention_nd's map is the first `rank`
// of (t, y, x), its window the product of `kernels` (one entry: every axis).
struct Sizes {
  int64_t b, h, y, x, d, nq, nk, dv, k, t;
  int64_t rank;
  std::vector<int64_t> kernels;
  int64_t window() const {
    int64_t slots = 1;
    for (int64_t a = 0; a < rank; ++a) {
      const int64_t k = kernels.size() == 1 ? kernels[0] : kernels[a];
      slots *= k > 0 && k < (int64_t{1} << 20) ? k : 3;
    }
    return slots;
  }
};

// The shape the argument `name` of a slide_attention_nd schema asks for.
std::vector<int64_t> expected_nd_shape(const std::string& name, const Sizes& s) {
  const int64_t window = s.window();
  if (name == "key_bias") return {s.h, window};
  if (name == "shift_weight") return {s.d, window, window};
  if (name == "shift_bias") return {s.d, window};
  std::vector<int64_t> shape = {s.b, s.h};
  const int64_t map[] = {s.t, s.y, s.x};
  shape.insert(shape.end(), map, map + s.rank);
  if (name != "logsumexp") shape.push_back(s.d);
  return shape;
}

int64_t small_size(FuzzInput& in) { return in.pick<int64_t>({1, 2, 3, 0, 1, 4, 5, 7, 9, 17, 33}); }

// The shape the argument `name` of a slide (or attention) schema asks for.
std::vector<int64_t> expected_shape(const std::string& name, bool slide, const Sizes& s, FuzzInput& in) {
  const int64_t k2 = s.k > 0 && s.k < (int64_t{1} << 20) ? s.k * s.k : 9;
  if (slide) {
    if (name == "logsumexp") return {s.b, s.h, s.y, s.x};
    if (name == "key_bias") return {s.h, k2};
    if (name == "shift_weight") return {s.d, k2, k2};
    if (name == "shift_bias") return {s.d, k2};
    return {s.b, s.h, s.y, s.x, s.d};
  }
  if (name == "key") return {s.b, s.h, s.nk, s.d};
  if (name == "value") return {s.b, s.h, s.nk, s.dv};
  if (name == "logsumexp") return {s.b, s.h, s.nq};
  if (name == "attn_bias") {
    switch (in.index(4)) {  // the broadcast forms
      case 0: return {s.nq, s.nk};
      case 1: return {1, s.h, s.nq, s.nk};
      case 2: return {s.b, 1, 1, s.nk};
      default: return {s.b, s.h, s.nq, s.nk};
    }
  }
  if (name == "grad_output" || name == "output") return {s.b, s.h, s.nq, s.dv};
  return {s.b, s.h, s.nq, s.d};  // query
}

// The elements of the shape with every 0 read as 1: what the strided and expanded layouts below
// may allocate for it (an empty tensor's other sizes are still allocated by a transposed or
// expanded view's base).
int64_t footprint(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t size : shape) {
    size = std::max<int64_t>(size, 1);
    if (n > std::numeric_limits<int64_t>::max() / size) return std::numeric_limits<int64_t>::max();
    n *= size;
  }
  return n;
}

at::Tensor make_tensor(FuzzInput& in, std::vector<int64_t> shape, at::ScalarType dtype, bool meta,
                       at::Generator& generator) {
  switch (in.index(12)) {  // perturbations; 0-5 leave the shape alone
    case 6:
      if (!shape.empty()) shape[in.index(shape.size())] += in.pick<int64_t>({1, -1, kHuge});
      break;
    case 7:
      if (!shape.empty()) shape[in.index(shape.size())] = 0;
      break;
    case 8:
      if (in.flag() && !shape.empty()) {
        shape.pop_back();
      } else {
        shape.push_back(in.pick<int64_t>({1, 2}));
      }
      break;
    case 9:
      dtype = in.pick<at::ScalarType>({at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kBool, at::kComplexFloat});
      break;
    case 10:
      meta = !meta;
      break;
    case 11:
      return at::Tensor();
  }
  for (int64_t& size : shape) size = std::max<int64_t>(size, in.flag() && in.flag() ? -1 : 0);
  if (std::any_of(shape.begin(), shape.end(), [](int64_t size) { return size < 0; })) {
    shape.assign(shape.size(), 1);  // at::empty refuses negative sizes before any op sees them
  }
  if (footprint(shape) > kMaxCpuElements) meta = true;
  const at::TensorOptions options = at::TensorOptions().dtype(dtype).device(meta ? at::kMeta : at::kCPU);
  at::Tensor t;
  const size_t layout = shape.empty() ? 0 : in.index(4);
  if (layout == 1 && shape.size() >= 2) {  // transposed strides
    std::vector<int64_t> swapped = shape;
    std::swap(swapped[swapped.size() - 1], swapped[swapped.size() - 2]);
    t = at::empty(swapped, options).transpose(-1, -2);
  } else if (layout == 2 && footprint(shape) <= kMaxCpuElements / 2) {  // every other element
    std::vector<int64_t> wide = shape;
    wide.back() *= 2;
    t = at::empty(wide, options).slice(-1, 0, wide.back(), 2);
  } else if (layout == 3) {  // stride 0 in the first dimension
    std::vector<int64_t> one = shape;
    one[0] = 1;
    t = at::empty(one, options).expand(shape);
  } else {
    t = at::empty(shape, options);
  }
  if (!meta && t.numel() > 0) {
    at::Tensor values = at::randn(t.sizes(), generator, at::TensorOptions().dtype(at::kDouble));
    switch (in.index(8)) {
      case 0: values.view(-1)[0] = std::numeric_limits<double>::quiet_NaN(); break;
      case 1: values.view(-1)[0] = std::numeric_limits<double>::infinity(); break;
      case 2: values.fill_(-std::numeric_limits<double>::infinity()); break;
      default: break;
    }
    if (at::isComplexType(dtype)) values = values.to(at::kComplexDouble);
    if (layout == 3) {
      t = values.narrow(0, 0, 1).to(dtype).expand(shape);
    } else {
      t.copy_(values);
    }
  }
  if (!meta && at::isFloatingType(t.scalar_type()) && in.index(4) == 0) t.requires_grad_(true);
  return t;
}

c10::IValue make_argument(FuzzInput& in, const c10::Argument& argument, bool slide, bool nd,
                          const Sizes& sizes, at::ScalarType dtype, bool meta, at::Generator& generator) {
  const c10::TypePtr& type = argument.type();
  const std::string& name = argument.name();
  const bool optional = type->kind() == c10::TypeKind::OptionalType;
  const c10::TypePtr& inner = optional ? type->castRaw<c10::OptionalType>()->getElementType() : type;
  if (optional && in.index(3) == 0) return c10::IValue();
  switch (inner->kind()) {
    case c10::TypeKind::TensorType:
      return make_tensor(in, nd ? expected_nd_shape(name, sizes) : expected_shape(name, slide, sizes, in), dtype,
                         meta, generator);
    case c10::TypeKind::IntType:
      if (name == "kernel_size" && in.index(4) != 0) return sizes.k;
      return in.pick<int64_t>({1, 2, 3, 0, -1, -3, 5, 7, 13, (int64_t{1} << 31) + 1,
                               (int64_t{1} << 32) + 1, std::numeric_limits<int64_t>::max(),
                               std::numeric_limits<int64_t>::min()});
    case c10::TypeKind::FloatType:
      return in.pick<double>({0.5, 1.0, 0.0, -1.0, 1e300, std::numeric_limits<double>::quiet_NaN(),
                              std::numeric_limits<double>::infinity(), 1e-300});
    case c10::TypeKind::BoolType:
      return in.flag();
    case c10::TypeKind::StringType:
      return std::string(in.pick<const char*>({"zeros", "clamp", "", "Zeros", "reflect", "zeros "}));
    case c10::TypeKind::ListType:
      if (inner->castRaw<c10::ListType>()->getElementType()->kind() == c10::TypeKind::IntType) {  // int[]
        if (name == "kernel_size" && in.index(4) != 0) return c10::List<int64_t>(sizes.kernels);
        c10::List<int64_t> values;
        for (size_t i = in.index(5); i > 0; --i) values.push_back(in.pick<int64_t>({1, 2, 3, 0, -1, 5, 127, 129,
                                                                                     (int64_t{1} << 31) + 1}));
        return values;
      }
      return c10::List<bool>({in.flag(), in.flag(), in.flag()});  // bool[3]
    default:
      return c10::IValue();
  }
}

[[noreturn]] void finding(const c10::OperatorHandle& op, const std::string& what) {
  std::fprintf(stderr, "ops fuzzer: %s: %s\n", op.operator_name().name.c_str(), what.c_str());
  std::abort();
}

// Runs the op on `arguments` and, for a differentiable op, the backward of its first output that
// requires grad. A refusal must be the operators' own message; anything else is a finding.
// Returns "" when the call succeeded (`outputs` holds its results), else the refusal.
std::string call(const c10::OperatorHandle& op, const torch::jit::Stack& arguments, torch::jit::Stack& outputs) {
  outputs = arguments;
  try {
    op.callBoxed(&outputs);
    const bool differentiable = op.operator_name().name.rfind("slideformer::_", 0) != 0;
    for (const c10::IValue& output : differentiable ? outputs : torch::jit::Stack()) {
      if (!output.isTensor()) continue;
      const at::Tensor& t = output.toTensor();
      if (t.defined() && t.requires_grad() && t.numel() > 0) {
        t.sum().backward();
        break;
      }
    }
    return "";
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    // (error.what() adds where it was raised when TORCH_SHOW_CPP_STACKTRACES=1.)
    if (message.rfind("slideformer::", 0) != 0) finding(op, std::string("a refusal that is not the op's own: ") + error.what());
    return message;
  } catch (const std::exception& error) {
    finding(op, std::string("an exception other than c10::Error: ") + error.what());
  }
}

// The arguments with every tensor replaced by `convert` of it (detached, no grad: the oracles
// compare the forward results).
template <typename Convert>
torch::jit::Stack converted(const torch::jit::Stack& arguments, Convert convert) {
  torch::jit::Stack out;
  for (const c10::IValue& value : arguments) {
    out.push_back(value.isTensor() && value.toTensor().defined() ? c10::IValue(convert(value.toTensor().detach()))
                                                                  : value);
  }
  return out;
}

bool all_on_cpu(const torch::jit::Stack& arguments) {
  return std::all_of(arguments.begin(), arguments.end(), [](const c10::IValue& v) {
    return !v.isTensor() || !v.toTensor().defined() || v.toTensor().device().is_cpu();
  });
}

int64_t largest_tensor(const torch::jit::Stack& arguments) {
  int64_t largest = 0;
  for (const c10::IValue& v : arguments) {
    if (v.isTensor() && v.toTensor().defined()) largest = std::max(largest, v.toTensor().numel());
  }
  return largest;
}

// Outputs of the two kernels agree: shapes and dtypes always, values (when `values`) within a
// tolerance of the dtype relative to the largest CPU value, where the CPU result is finite.
void expect_same_outputs(const c10::OperatorHandle& op, const char* oracle, const torch::jit::Stack& cpu,
                         const torch::jit::Stack& other, bool values) {
  if (cpu.size() != other.size()) finding(op, std::string(oracle) + ": another number of outputs");
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!cpu[i].isTensor()) continue;
    const at::Tensor& a = cpu[i].toTensor();
    const at::Tensor& b = other[i].toTensor();
    const std::string output = std::string(oracle) + ", output " + std::to_string(i) + ": ";
    if (a.defined() != b.defined()) finding(op, output + "defined on one side only");
    if (!a.defined()) continue;
    if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
      finding(op, output + "CPU " + c10::str(a.sizes(), " ", a.scalar_type()) + ", other " +
                      c10::str(b.sizes(), " ", b.scalar_type()));
    }
    if (!values || a.numel() == 0 || !a.isfinite().all().item<bool>()) continue;
    const at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
    const double tolerance = a.scalar_type() == at::kDouble ? 1e-9
                             : a.scalar_type() == at::kFloat ? 1e-4
                             : a.scalar_type() == at::kHalf  ? 1e-2
                                                             : 6e-2;
    const double scale = std::max(1.0, x.abs().max().item<double>());
    const double difference = (x - y).abs().max().item<double>();
    if (!(difference <= tolerance * scale)) {
      finding(op, output + "max |CPU - host-executed CUDA| = " + std::to_string(difference) + " (largest " +
                      std::to_string(scale) + ")");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<c10::OperatorHandle> ops = public_schemas();
  FuzzInput in(data, size);
  const c10::OperatorHandle& op = ops[in.index(ops.size())];
  const bool slide = op.operator_name().name.find("slide") != std::string::npos;
  const bool nd = op.operator_name().name.find("slide_attention_nd") != std::string::npos;
  Sizes sizes{};
  sizes.b = in.pick<int64_t>({1, 2, 0, 3});
  sizes.h = in.pick<int64_t>({1, 2, 0, 3});
  sizes.y = small_size(in);
  sizes.x = small_size(in);
  sizes.d = small_size(in);
  sizes.nq = small_size(in);
  sizes.nk = small_size(in);
  sizes.dv = small_size(in);
  sizes.k = in.pick<int64_t>({3, 1, 5, 7, 13, 3, 1, 3});
  sizes.t = small_size(in);
  sizes.rank = in.pick<int64_t>({1, 3, 2});
  sizes.kernels = {sizes.k};
  if (in.flag()) {  // per-axis kernel sizes
    sizes.kernels.clear();
    for (int64_t a = 0; a < sizes.rank; ++a) sizes.kernels.push_back(in.pick<int64_t>({3, 1, 5}));
  }
  const bool meta = in.index(8) == 0;
  if (meta && in.flag()) {  // huge sizes, which only meta tensors can have
    int64_t* all[] = {&sizes.b, &sizes.h, &sizes.y, &sizes.x, &sizes.d, &sizes.nq, &sizes.nk, &sizes.dv, &sizes.t};
    *all[in.index(9)] = in.pick<int64_t>({kHuge, int64_t{1} << 31, (int64_t{1} << 62) + 1});
  }
  const at::ScalarType dtype = in.pick<at::ScalarType>({at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(in.byte());

  torch::jit::Stack arguments;
  try {
    for (const c10::Argument& argument : op.schema().arguments()) {
      arguments.push_back(make_argument(in, argument, slide, nd, sizes, dtype, meta, generator));
    }
  } catch (const c10::Error&) {
    return 0;  // at::empty refuses sizes whose bytes overflow before any op sees them
  }
  torch::jit::Stack cpu_outputs;
  if (!call(op, arguments, cpu_outputs).empty() || !all_on_cpu(arguments)) return 0;
  torch::jit::Stack meta_outputs, plain_outputs, host_outputs;
  const torch::jit::Stack on_meta = converted(arguments, [](const at::Tensor& t) { return t.to(at::kMeta); });
  std::string refusal = call(op, on_meta, meta_outputs);
  if (!refusal.empty()) finding(op, "the Meta kernel refused what the CPU kernel took: " + refusal);
  expect_same_outputs(op, "Meta", cpu_outputs, meta_outputs, false);
  const torch::jit::Stack plain = converted(arguments, [](const at::Tensor& t) { return t; });
  refusal = call(op, plain, plain_outputs);
  if (!refusal.empty()) finding(op, "the CPU kernel refused its inputs without grad: " + refusal);
  if (largest_tensor(plain) > kMaxHostExecutionElements) return 0;
  {
    const slideformer::testing::ScopedCudaHostExecution host;
    refusal = call(op, plain, host_outputs);
  }
  // The one refusal of the CUDA kernels alone: more shared memory than the GPU has.
  if (!refusal.empty() && refusal.find("shared memory") != std::string::npos) return 0;
  if (!refusal.empty()) finding(op, "the CUDA kernels refused what the CPU kernel took: " + refusal);
  expect_same_outputs(op, "host-executed CUDA", plain_outputs, host_outputs, true);
  return 0;
}
