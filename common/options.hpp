/// @file options.hpp
/// @brief Parsing of the options every chapter program shares.
///
/// Every pair accepts the same options so that the notes, the tests and a learner can rely on
/// them: `--timeout SECONDS` (default 60: time for a person to switch terminals), `--quiet`,
/// `--help`; named techniques add `--name NAME`, and where there is a named object to keep or
/// replace, `--keep` and `--force`. A chapter adds its own options through OptionSpec::extra.
/// The parsing is glibc's `getopt_long(3)`, as in TLPI's programs and util-linux: `--opt VALUE`
/// and `--opt=VALUE`, options and operands in any order, `--` ends the options, and (the GNU
/// convention) an unambiguous prefix such as `--time` stands for `--timeout`. Any mistake throws
/// UsageError with one line that names the option (exit status 2).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace shmtut {

/// One chapter-specific option.
struct ExtraOption {
    std::string name;      ///< with the dashes: "--fd"
    bool takes_value;      ///< true: `--fd 3`; false: a flag
    std::function<void(const std::string& value)> apply; ///< throws UsageError on a bad value
};

/// What a program accepts, and its `--help` text.
struct OptionSpec {
    const char* usage = "";       ///< printed by --help, to stdout
    const char* default_name = nullptr; ///< non-null: `--name` is accepted, with this default
    bool keep_and_force = false;  ///< `--keep` and `--force` are accepted
    bool operands = false;        ///< MESSAGE... operands are accepted
    std::vector<ExtraOption> extra; ///< the chapter's own options
};

/// The shared options after parsing.
struct Options {
    std::string name;                  ///< `--name`, or the chapter's default
    double timeout_seconds = 60.0;     ///< `--timeout`: bound of every wait for the peer
    bool quiet = false;                ///< `--quiet`: no narration
    bool keep = false;                 ///< `--keep`: leave the named object after the run
    bool force = false;                ///< `--force`: replace a stale named object
    bool help = false;                 ///< `--help` was given and the usage was printed
    std::vector<std::string> operands; ///< the MESSAGE operands
};

/// Parses argv by `spec`. On `--help` prints `spec.usage` to stdout and returns with `help` set.
Options parse_options(int argc, char** argv, const OptionSpec& spec);

/// Parses a `--timeout` value: a decimal number of seconds, greater than 0 and at most one day.
double parse_seconds(const std::string& option, const std::string& text);

/// A user as a person reads it: "uid 1000 (alice)", or "uid 1000" for a uid without a name.
std::string user_text(uid_t uid);

/// `name` made this user's own: "-USER" (the login name of the effective uid, or its number)
/// before the extension of its last component: "/tmp/shm-tutorial-04.sock" becomes
/// "/tmp/shm-tutorial-04-alice.sock", "/shm-tutorial-02" becomes "/shm-tutorial-02-alice".
std::string personal_name(const std::string& name);

/// Why a chapter's default names need this: they are the same for every user of a machine, so
/// two people who run a chapter at once on one server (a workshop room) meet at the same key
/// file, `/dev/shm` name or socket path, and the second one's programs are refused (EEXIST,
/// EACCES, EADDRINUSE). The end of that error line: `what` (the object found at `name`) belongs
/// to `owner`, another user, and the `--name` to give both programs instead.
std::string another_users_name(const std::string& what, const std::string& name, uid_t owner);

} // namespace shmtut
