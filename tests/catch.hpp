/// @file tests/catch.hpp
/// @brief The one place that includes Catch2: version 2 (Debian 12) or version 3 (Debian 13,
///        Ubuntu 24.04), whichever is installed.
#pragma once

#include <string>

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
/// A matcher for "the text contains `part`", under its version-3 name.
inline auto contains(const std::string& part) { return Catch::Matchers::ContainsSubstring(part); }
#else
#include <catch2/catch.hpp>
/// A matcher for "the text contains `part`", under its version-2 name.
inline auto contains(const std::string& part) { return Catch::Matchers::Contains(part); }
#endif
