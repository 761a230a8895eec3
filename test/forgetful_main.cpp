// A program whose main forgot uvexec::worker_main: started as a worker it
// would run main again and start workers of its own. The tests use it as a
// worker executable and expect a clear error instead of a fork bomb.
#include <uvexec/uvexec.hpp>

#include "remote_functions.hpp"

int main() {
    uvexec::loop lp;  // a worker that gets here exits with status 121
    uvexec::process_pool_executor ex{{.max_workers = 2}};
    return lp.run_until_complete(lp.run_in_executor(ex, uvexec::fn<&remote::square>, 3)) == 9 ? 0 : 1;
}
