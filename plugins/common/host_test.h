// host_test.h: the minimal test harness of the C++ host tests (CTest, no GPU).
//
// A test file defines `void case()` functions using EXPECT / EXPECT_EQ / REQUIRE, lists them in
// `const convcrf::test::Case kCases[]`, and its main returns convcrf::test::run(kCases, argc,
// argv). `prog NAME` runs one case (one CTest entry per case), `prog` runs them all; a FAIL line
// names each failing case and the exit code is non-zero.
#pragma once

#include <cstdio>
#include <cstring>

namespace convcrf {
namespace test {

inline int& failures()
{
    static int count = 0;
    return count;
}

struct Case {
    const char* name;
    void (*fn)();
};

template <size_t N>
int run(const Case (&cases)[N], int argc, char** argv)
{
    int ran = 0;
    for (const Case& c : cases) {
        if (argc > 1 && std::strcmp(argv[1], c.name) != 0)
            continue;
        const int before = failures();
        c.fn();
        std::printf("%s %s\n", failures() == before ? "PASS" : "FAIL", c.name);
        ++ran;
    }
    if (ran == 0) {
        std::fprintf(stderr, "unknown test case '%s'\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    return failures() == 0 ? 0 : 1;
}

}  // namespace test
}  // namespace convcrf

#define EXPECT(cond)                                                                      \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
            ++convcrf::test::failures();                                                  \
        }                                                                                 \
    } while (0)

#define EXPECT_EQ(a, b)                                                                   \
    do {                                                                                  \
        auto const va = (a);                                                              \
        auto const vb = (b);                                                              \
        if (!(va == vb)) {                                                                \
            std::fprintf(stderr, "  FAILED %s:%d: %s == %s (%lld vs %lld)\n", __FILE__,   \
                         __LINE__, #a, #b, (long long) va, (long long) vb);               \
            ++convcrf::test::failures();                                                  \
        }                                                                                 \
    } while (0)

// Like EXPECT, but returns from the test case: for preconditions of the checks that follow.
#define REQUIRE(cond)                                                                     \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "  FAILED (fatal) %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            ++convcrf::test::failures();                                                  \
            return;                                                                       \
        }                                                                                 \
    } while (0)
