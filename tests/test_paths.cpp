#include "test_paths.h"

namespace slideformer::test_paths {

const char* const distributed_worker = SLIDEFORMER_DISTRIBUTED_WORKER;
const char* const io_test_data = SLIDEFORMER_IO_TEST_DATA;

}  // namespace slideformer::test_paths
