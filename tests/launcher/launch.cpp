/// @file tests/launcher/launch.cpp
/// @brief The tests' launcher: starts a chapter program with system calls made to fail (a seccomp
///        filter), or stopped for the test to trace it (ptrace), so that a test can make a
///        missing kernel feature or a race happen on purpose.
///
/// Usage: `launch [--fail NR=ERRNO | --fail NR:ARG:MASK=ERRNO]... [--traced] -- PROGRAM [ARG...]`
///
/// `--fail NR=ERRNO`: every call of system call number NR fails with ERRNO, as on a kernel that
/// lacks it (`pidfd_open` with ENOSYS is a kernel before 5.3). With `:ARG:MASK`, only the calls
/// whose argument ARG (0-5, its low 32 bits) has a bit of MASK set: `memfd_create` with
/// `MFD_NOEXEC_SEAL` failing with EINVAL is a kernel before 6.3. The filter is installed with
/// `PR_SET_NO_NEW_PRIVS` (which lets an unprivileged process install one, see seccomp(2)) and is
/// inherited across the exec. `--traced`: `PTRACE_TRACEME` before the exec, so the program stops
/// at its first instruction until the test (the parent) drives it with stop_at_syscall().
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

#if defined(__x86_64__)
constexpr unsigned kNativeArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr unsigned kNativeArch = AUDIT_ARCH_AARCH64;
#elif defined(__arm__)
constexpr unsigned kNativeArch = AUDIT_ARCH_ARM;
#elif defined(__i386__)
constexpr unsigned kNativeArch = AUDIT_ARCH_I386;
#else
#error "add this architecture's AUDIT_ARCH_ value"
#endif

/// One `--fail` rule.
struct FailRule {
    unsigned number = 0;
    int argument = -1; ///< -1: every call
    unsigned mask = 0;
    unsigned error = 0;
};

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "launch: %s\nusage: launch [--fail NR[:ARG:MASK]=ERRNO]... [--traced] -- PROGRAM [ARG...]\n",
                 what.c_str());
    std::exit(125);
}

FailRule parse_rule(const std::string& text) {
    FailRule rule;
    unsigned argument = 0;
    if (std::sscanf(text.c_str(), "%u:%u:%u=%u", &rule.number, &argument, &rule.mask, &rule.error) == 4) {
        if (argument > 5)
            usage_error("argument index above 5 in '" + text + "'");
        rule.argument = static_cast<int>(argument);
    } else if (std::sscanf(text.c_str(), "%u=%u", &rule.number, &rule.error) != 2) {
        usage_error("cannot read the rule '" + text + "'");
    }
    if (rule.error == 0 || rule.error > SECCOMP_RET_DATA)
        usage_error("bad errno in '" + text + "'");
    return rule;
}

/// Offset of the low 32 bits of argument `index` in `struct seccomp_data`.
unsigned argument_low_word(int index) {
    auto offset = static_cast<unsigned>(offsetof(seccomp_data, args) + 8 * static_cast<unsigned>(index));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    offset += 4;
#endif
    return offset;
}

sock_filter statement(unsigned short code, unsigned k) {
    return sock_filter{code, 0, 0, k};
}

sock_filter jump(unsigned short code, unsigned k, unsigned char if_true, unsigned char if_false) {
    return sock_filter{code, if_true, if_false, k};
}

/// A classic BPF program: another architecture's calls are allowed untouched; then one block per
/// rule (load the number, compare, maybe test the argument, return the errno); then allow.
void install_filter(const std::vector<FailRule>& rules) {
    std::vector<sock_filter> program;
    program.push_back(statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
    program.push_back(statement(BPF_JMP | BPF_JEQ | BPF_K, kNativeArch)); // patched below
    std::size_t arch_check = program.size() - 1;
    for (const FailRule& rule : rules) {
        const unsigned char block = rule.argument < 0 ? 1 : 3; // instructions after the jeq before the ret
        program.push_back(statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
        program.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, rule.number, 0, block));
        if (rule.argument >= 0) {
            program.push_back(statement(BPF_LD | BPF_W | BPF_ABS, argument_low_word(rule.argument)));
            program.push_back(jump(BPF_JMP | BPF_JSET | BPF_K, rule.mask, 0, 1));
        }
        program.push_back(statement(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | rule.error));
    }
    program.push_back(statement(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    // Native architecture: fall through to the rules; any other: jump to the final allow.
    program[arch_check].jt = 0;
    program[arch_check].jf = static_cast<unsigned char>(program.size() - 1 - arch_check - 1);

    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
        std::perror("launch: prctl(PR_SET_NO_NEW_PRIVS)");
        std::exit(126);
    }
    sock_fprog fprog{static_cast<unsigned short>(program.size()), program.data()};
    if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == -1) {
        std::perror("launch: seccomp(SECCOMP_SET_MODE_FILTER)");
        std::exit(126);
    }
}

} // namespace

int main(int argc, char** argv) {
    std::vector<FailRule> rules;
    bool traced = false;
    int i = 1;
    for (; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--") {
            ++i;
            break;
        }
        if (arg == "--traced")
            traced = true;
        else if (arg == "--fail" && i + 1 < argc)
            rules.push_back(parse_rule(argv[++i]));
        else
            usage_error("unknown argument '" + arg + "'");
    }
    if (i >= argc)
        usage_error("no program to start");
    if (traced) {
        // LeakSanitizer stops the world with ptrace, which fails in a traced process: off there.
        std::string asan = std::getenv("ASAN_OPTIONS") != nullptr ? std::getenv("ASAN_OPTIONS") : "";
        ::setenv("ASAN_OPTIONS", (asan.empty() ? "" : asan + ":").append("detect_leaks=0").c_str(), 1);
        if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) == -1) {
            std::perror("launch: ptrace(PTRACE_TRACEME)");
            return 126;
        }
    }
    if (!rules.empty())
        install_filter(rules);
    ::execv(argv[i], argv + i);
    std::fprintf(stderr, "launch: exec %s: %s\n", argv[i], std::strerror(errno));
    return 127;
}
