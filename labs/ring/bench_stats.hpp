/// @file labs/ring/bench_stats.hpp
/// @brief Lab ring: the order statistics ring_bench prints (median, quartiles).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace ring {

/// The value at fraction `q` (0 to 1) of `values`, interpolated between the two nearest ranks
/// (the definition of R's default and numpy's `linear`): the median of an even count is the mean
/// of the two middle values, not the upper one. 0 for no values.
inline double quantile(std::vector<double> values, double q) {
    if (values.empty())
        return 0;
    std::sort(values.begin(), values.end());
    const double position = q * static_cast<double>(values.size() - 1);
    const auto below = static_cast<std::size_t>(std::floor(position));
    const std::size_t above = std::min(below + 1, values.size() - 1);
    const double fraction = position - static_cast<double>(below);
    return values[below] + fraction * (values[above] - values[below]);
}

} // namespace ring
