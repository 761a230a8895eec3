// Must not compile: fn<> names functions, not lambdas.
#include <uvexec/uvexec.hpp>

int main() {
    constexpr auto twice = [](int n) { return 2 * n; };
    return uvexec::fn<twice>(1);
}
