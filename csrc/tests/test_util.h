// Minimal test harness for the C++ unit tests (no external test framework needed to build).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lctest {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
  static std::vector<std::pair<std::string, std::function<void()>>> r;
  return r;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().emplace_back(name, std::move(fn)); }
};

inline int run_all(int argc, char** argv) {
  int failed = 0, ran = 0;
  for (auto& [name, fn] : registry()) {
    if (argc > 1) {
      bool wanted = false;
      for (int i = 1; i < argc; ++i) wanted |= name == argv[i];
      if (!wanted) continue;
    }
    ++ran;
    try {
      fn();
      std::printf("[ OK ] %s\n", name.c_str());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("[FAIL] %s: %s\n", name.c_str(), e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d/%d tests passed\n", ran - failed, ran);
  return failed ? 1 : 0;
}

}  // namespace lctest

#define LC_TEST(name)                                            \
  static void name();                                            \
  static ::lctest::Registrar name##_registrar(#name, name);      \
  static void name()

#define LC_CHECK(cond)                                                                              \
  do {                                                                                              \
    if (!(cond)) throw ::lctest::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                         ": check failed: " #cond);                                 \
  } while (0)

// Runs stmt, requires it to throw Type whose message contains `needle`.
#define LC_CHECK_THROWS(stmt, Type, needle)                                                                   \
  do {                                                                                                        \
    bool thrown_ = false;                                                                                     \
    try {                                                                                                     \
      stmt;                                                                                                   \
    } catch (const Type& e_) {                                                                                \
      thrown_ = true;                                                                                         \
      if (std::string(e_.what()).find(needle) == std::string::npos)                                          \
        throw ::lctest::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": message '" +    \
                                e_.what() + "' lacks '" + needle + "'");                                      \
    }                                                                                                         \
    if (!thrown_)                                                                                             \
      throw ::lctest::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #stmt            \
                              " did not throw " #Type);                                                       \
  } while (0)
