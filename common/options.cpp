/// @file options.cpp
/// @brief Implementation of parse_options().
#include "options.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "error.hpp"

namespace shmtut {

double parse_seconds(const std::string& option, const std::string& text) {
    char* end = nullptr;
    double seconds = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(seconds) || seconds <= 0 ||
        seconds > 86400)
        throw UsageError(option + " wants a number of seconds above 0 and at most 86400, not '" + text + "'");
    return seconds;
}

Options parse_options(int argc, char** argv, const OptionSpec& spec) {
    Options options;
    if (spec.default_name != nullptr)
        options.name = spec.default_name;
    bool options_ended = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (options_ended || arg.empty() || arg[0] != '-' || arg == "-") {
            if (!spec.operands)
                throw UsageError("unexpected argument '" + arg + "'");
            options.operands.push_back(arg);
            continue;
        }
        if (arg == "--") {
            options_ended = true;
            continue;
        }
        // Split "--opt=value"; otherwise the value, if the option takes one, is the next word.
        std::string name = arg;
        std::string value;
        bool has_inline_value = false;
        if (auto eq = arg.find('='); eq != std::string::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            has_inline_value = true;
        }
        auto take_value = [&]() -> std::string {
            if (has_inline_value)
                return value;
            if (i + 1 >= argc)
                throw UsageError(name + " needs a value");
            return argv[++i];
        };
        auto no_value = [&] {
            if (has_inline_value)
                throw UsageError(name + " takes no value");
        };

        if (name == "--help" || name == "-h") {
            no_value();
            std::fputs(spec.usage, stdout);
            std::fflush(stdout);
            options.help = true;
            return options;
        } else if (name == "--quiet") {
            no_value();
            options.quiet = true;
        } else if (name == "--timeout") {
            options.timeout_seconds = parse_seconds(name, take_value());
        } else if (name == "--name" && spec.default_name != nullptr) {
            options.name = take_value();
            if (options.name.empty())
                throw UsageError("--name must not be empty");
        } else if (name == "--keep" && spec.keep_and_force) {
            no_value();
            options.keep = true;
        } else if (name == "--force" && spec.keep_and_force) {
            no_value();
            options.force = true;
        } else {
            bool found = false;
            for (const ExtraOption& extra : spec.extra) {
                if (extra.name != name)
                    continue;
                found = true;
                if (extra.takes_value) {
                    extra.apply(take_value());
                } else {
                    no_value();
                    extra.apply({});
                }
            }
            if (!found)
                throw UsageError("unknown option '" + name + "'");
        }
    }
    return options;
}

} // namespace shmtut
