/// @file options.cpp
/// @brief Implementation of parse_options() with glibc's `getopt_long(3)`, as TLPI's programs
///        and util-linux parse theirs.
#include "options.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <getopt.h>
#include <pwd.h>
#include <unistd.h>

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

namespace {

// getopt_long's return values for the long options: the shared ones, then one per extra option.
enum : int { kHelp = 'h', kQuiet = 256, kTimeout, kName, kKeep, kForce, kFirstExtra };

} // namespace

Options parse_options(int argc, char** argv, const OptionSpec& spec) {
    Options options;
    if (spec.default_name != nullptr)
        options.name = spec.default_name;

    // The table getopt_long(3) reads: only the options this program accepts, so that any other
    // is "unknown". It holds pointers into `extra_names`, which therefore never grows after.
    std::vector<std::string> extra_names;
    for (const ExtraOption& extra : spec.extra)
        extra_names.push_back(extra.name.substr(extra.name.find_first_not_of('-')));
    std::vector<option> table = {
        {"help", no_argument, nullptr, kHelp},
        {"quiet", no_argument, nullptr, kQuiet},
        {"timeout", required_argument, nullptr, kTimeout},
    };
    if (spec.default_name != nullptr)
        table.push_back({"name", required_argument, nullptr, kName});
    if (spec.keep_and_force) {
        table.push_back({"keep", no_argument, nullptr, kKeep});
        table.push_back({"force", no_argument, nullptr, kForce});
    }
    for (std::size_t i = 0; i < spec.extra.size(); ++i)
        table.push_back({extra_names[i].c_str(), spec.extra[i].takes_value ? required_argument : no_argument, nullptr,
                         kFirstExtra + static_cast<int>(i)});
    table.push_back({nullptr, 0, nullptr, 0});

    // "-": operands come back in order as option 1 (so an operand where none is allowed is
    // reported where it stands); ":": a missing value returns ':' instead of a message from
    // glibc, so that every message below is ours. optind = 0 starts a fresh scan (glibc).
    const char* short_options = "-:h";
    opterr = 0;
    optind = 0;
    for (int code; (code = ::getopt_long(argc, argv, short_options, table.data(), nullptr)) != -1;) {
        // For a long option, the word that held it, as written: "--quiet" from "--quiet=yes".
        const std::string word = argv[optind - 1];
        const std::string written = word.substr(0, word.find('='));
        switch (code) {
        case 1:
            if (!spec.operands)
                throw UsageError("unexpected argument '" + std::string(optarg) + "'");
            options.operands.push_back(optarg);
            break;
        case kHelp:
            std::fputs(spec.usage, stdout);
            std::fflush(stdout);
            options.help = true;
            return options;
        case kQuiet:
            options.quiet = true;
            break;
        case kTimeout:
            options.timeout_seconds = parse_seconds("--timeout", optarg);
            break;
        case kName:
            options.name = optarg;
            if (options.name.empty())
                throw UsageError("--name must not be empty");
            break;
        case kKeep:
            options.keep = true;
            break;
        case kForce:
            options.force = true;
            break;
        case ':': // a value is missing: optopt says whose
            throw UsageError(written + " needs a value");
        case '?':
            if (optopt == 0) // an unknown or ambiguous long option
                throw UsageError("unknown option '" + written + "'");
            if (optopt >= kQuiet || (optopt == kHelp && word.rfind("--", 0) == 0)) // "--quiet=yes"
                throw UsageError(written + " takes no value");
            throw UsageError("unknown option '-" + std::string(1, static_cast<char>(optopt)) + "'");
        default:
            spec.extra[static_cast<std::size_t>(code - kFirstExtra)].apply(optarg != nullptr ? optarg : "");
            break;
        }
    }
    // After "--", getopt_long stops: the rest are operands.
    for (int i = optind; i < argc; ++i) {
        if (!spec.operands)
            throw UsageError("unexpected argument '" + std::string(argv[i]) + "'");
        options.operands.emplace_back(argv[i]);
    }
    return options;
}

std::string user_text(uid_t uid) {
    passwd entry{};
    passwd* found = nullptr;
    char buffer[1024];
    std::string text = "uid " + std::to_string(uid);
    if (::getpwuid_r(uid, &entry, buffer, sizeof buffer, &found) == 0 && found != nullptr)
        text += " (" + std::string(found->pw_name) + ")";
    return text;
}

std::string personal_name(const std::string& name) {
    passwd entry{};
    passwd* found = nullptr;
    char buffer[1024];
    const uid_t uid = ::geteuid();
    const std::string user = ::getpwuid_r(uid, &entry, buffer, sizeof buffer, &found) == 0 && found != nullptr
                                 ? std::string(found->pw_name)
                                 : std::to_string(uid);
    const std::size_t last_slash = name.rfind('/');
    const std::size_t component = last_slash == std::string::npos ? 0 : last_slash + 1;
    const std::size_t dot = name.rfind('.');
    const bool has_extension = dot != std::string::npos && dot > component;
    return has_extension ? name.substr(0, dot) + "-" + user + name.substr(dot) : name + "-" + user;
}

std::string another_users_name(const std::string& what, const std::string& name, uid_t owner) {
    return what + " belongs to " + user_text(owner) + ", another user: a default name is the same for every user "
           "of a machine; give your writer and your reader a name of your own: --name " + personal_name(name);
}

} // namespace shmtut
