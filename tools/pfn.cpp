/// @file tools/pfn.cpp
/// @brief `pfn PID ADDRESS...`: the physical frame behind an address of a running process, and
///        the mapping the address belongs to.
///
/// Usage: `build/tools/pfn PID ADDRESS...` (addresses in hexadecimal, `0x` optional, as
/// `/proc/PID/maps` and the chapters' narration print them).
///
/// Every chapter's "look inside" section uses it: run it on the writer's address of the shared
/// memory and on the reader's, and the two different virtual addresses show one physical frame
/// number (PFN). It reads the mapping from `/proc/PID/maps` and the page's 64-bit entry from
/// `/proc/PID/pagemap` (`proc(5)`, `Documentation/admin-guide/mm/pagemap.rst`): bit 63 says the
/// page is present in RAM, bit 62 that it is swapped out, bits 0-54 hold the PFN. The kernel
/// gives the PFN only to a reader with `CAP_SYS_ADMIN`; since Linux 4.2 everyone else reads 0
/// there. Reading another process's pagemap needs the same permission as reading its memory
/// (a ptrace "read" check): your own processes, or any as root. One kind of mapping has no
/// answer at all: a `VM_PFNMAP` one (device memory, the vDSO's `[vvar]` data pages), which the
/// kernel maps by frame number without page structures; pagemap does not walk it
/// (`walk_page_test()` in `mm/pagewalk.c`) and reports every page of it as not present, mapped
/// or not. pfn tells it by its `VmFlags` in `/proc/PID/smaps` (`pf`) and says so.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <getopt.h>
#include <unistd.h>

#include "error.hpp"
#include "owners.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: pfn PID ADDRESS...

Prints, for each ADDRESS in the running process PID, the physical frame number (PFN)
of the page that holds it, from /proc/PID/pagemap, and the line of /proc/PID/maps
that the address belongs to. ADDRESS is hexadecimal, 0x optional (as /proc/PID/maps
and the chapters' narration print them). Two processes that share a page show one
PFN behind two virtual addresses:
    build/tools/pfn WRITER_PID 0x7f3a5c2d1000
    build/tools/pfn READER_PID 0x7f8e10a4b000

PFNs need CAP_SYS_ADMIN (root): since Linux 4.2 the kernel shows 0 to everyone else
(frame numbers help Rowhammer-style attacks). Reading another process's pagemap needs
the right to read its memory: your own processes, or any as root.

Options:
  --help   show this help

A VM_PFNMAP mapping (VmFlags "pf" in /proc/PID/smaps: device memory, the vDSO's
[vvar] pages) is mapped by frame number and pagemap does not show its frames at all:
pfn says so rather than "not present".

Exit status: 0 every address has a PFN; 1 one did not (no such process, address not
mapped, page not present, PFN hidden, a VM_PFNMAP mapping), or a runtime failure; 2 a
usage error.
)";

// The bits of a pagemap entry used here (proc(5), Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPresent = 1ull << 63;
constexpr std::uint64_t kSwapped = 1ull << 62;
constexpr std::uint64_t kPfnMask = (1ull << 55) - 1;

/// One line of /proc/PID/maps: the range [start, end) and the line as the kernel wrote it.
struct MapsLine {
    std::uint64_t start = 0;
    std::uint64_t end = 0;
    std::string text;
};

/// A decimal process id, or UsageError.
pid_t parse_pid(const std::string& text) {
    char* end = nullptr;
    errno = 0;
    long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || value <= 0 || value > 4194304) // PID_MAX_LIMIT
        throw UsageError("PID wants a process id (a positive decimal number), not '" + text + "'");
    return static_cast<pid_t>(value);
}

/// A hexadecimal address, 0x optional, or UsageError.
std::uint64_t parse_address(const std::string& text) {
    std::string digits = text.rfind("0x", 0) == 0 || text.rfind("0X", 0) == 0 ? text.substr(2) : text;
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(digits.c_str(), &end, 16);
    if (digits.empty() || digits[0] == '-' || digits[0] == '+' || *end != '\0' || errno != 0)
        throw UsageError("ADDRESS wants a hexadecimal address such as 0x7f3a5c2d1000, not '" + text + "'");
    return value;
}

/// What to do about a failed open of a /proc/PID file.
std::string open_hint(int error, pid_t pid) {
    if (error == ENOENT || error == ESRCH)
        return "no process has pid " + std::to_string(pid) + " (has it exited?)";
    if (error == EACCES || error == EPERM)
        return "it is another user's process: run pfn as that user, or as root";
    return {};
}

/// Reads the whole of /proc/PID/maps and splits it into lines.
std::vector<MapsLine> read_maps(pid_t pid) {
    const std::string path = "/proc/" + std::to_string(pid) + "/maps";
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd)
        throw_errno("open(\"" + path + "\")", open_hint(errno, pid));
    std::string text;
    char buffer[65536];
    for (;;) {
        ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
        if (got == -1 && errno == EINTR)
            continue;
        if (got == -1)
            throw_errno("read(\"" + path + "\")", open_hint(errno, pid));
        if (got == 0)
            break;
        text.append(buffer, static_cast<std::size_t>(got));
    }
    if (text.empty())
        throw Failure("/proc/" + std::to_string(pid) + "/maps is empty: the process is exiting, or is a kernel thread");
    std::vector<MapsLine> lines;
    std::size_t begin = 0;
    while (begin < text.size()) {
        std::size_t newline = text.find('\n', begin);
        if (newline == std::string::npos)
            newline = text.size();
        MapsLine line;
        line.text = text.substr(begin, newline - begin);
        // "7f3a5c2d1000-7f3a5c2d2000 rw-s 00000000 00:01 2055    /dev/zero (deleted)"
        char* end = nullptr;
        line.start = std::strtoull(line.text.c_str(), &end, 16);
        if (*end == '-')
            line.end = std::strtoull(end + 1, nullptr, 16);
        // The kernel pads the path to a column; one space reads as well and keeps lines short.
        std::string compact;
        for (char c : line.text)
            if (c != ' ' || compact.empty() || compact.back() != ' ')
                compact += c;
        while (!compact.empty() && compact.back() == ' ')
            compact.pop_back();
        line.text = compact;
        lines.push_back(line);
        begin = newline + 1;
    }
    return lines;
}

/// True when /proc/PID/smaps gives the mapping that starts at `start` the VmFlags `pf`
/// (VM_PFNMAP): memory mapped by frame number, with no page structures behind it, which pagemap
/// does not walk. False when it does not, or when smaps cannot be read (the process exited).
bool is_pfnmap(pid_t pid, std::uint64_t start) {
    const std::string path = "/proc/" + std::to_string(pid) + "/smaps";
    std::FILE* smaps = std::fopen(path.c_str(), "re");
    if (smaps == nullptr)
        return false;
    // Each mapping is a maps line ("start-end perms ...") followed by its fields, the last of
    // which is "VmFlags: rd mr pf io de dd".
    bool in_mapping = false, pfnmap = false;
    char line[4096];
    while (std::fgets(line, sizeof line, smaps) != nullptr) {
        unsigned long long range_start = 0, range_end = 0;
        if (std::sscanf(line, "%llx-%llx ", &range_start, &range_end) == 2) {
            if (in_mapping)
                break; // the mapping had no VmFlags line
            in_mapping = range_start == start;
        } else if (in_mapping && std::strncmp(line, "VmFlags:", 8) == 0) {
            // Two-letter flags separated by spaces (proc(5)): look for the word "pf".
            char* saved = nullptr;
            for (char* word = ::strtok_r(line + 8, " \n", &saved); word != nullptr;
                 word = ::strtok_r(nullptr, " \n", &saved))
                pfnmap = pfnmap || std::strcmp(word, "pf") == 0;
            break;
        }
    }
    std::fclose(smaps);
    return pfnmap;
}

const MapsLine* find_mapping(const std::vector<MapsLine>& maps, std::uint64_t address) {
    for (const MapsLine& line : maps)
        if (line.start <= address && address < line.end)
            return &line;
    return nullptr;
}

/// Looks up every address; prints one line each on stdout and what went wrong on stderr.
/// Returns the exit status.
int run(pid_t pid, const std::vector<std::uint64_t>& addresses) {
    const auto page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    std::vector<MapsLine> maps = read_maps(pid);
    const std::string pagemap_path = "/proc/" + std::to_string(pid) + "/pagemap";
    UniqueFd pagemap(::open(pagemap_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!pagemap) {
        if (errno == ENOENT && ::access(("/proc/" + std::to_string(pid)).c_str(), F_OK) == 0)
            throw Unsupported(pagemap_path + " does not exist: this kernel was built without CONFIG_PROC_PAGE_MONITOR");
        throw_errno("open(\"" + pagemap_path + "\")", open_hint(errno, pid));
    }

    int status = kExitSuccess;
    bool hidden_said = false;
    for (std::uint64_t address : addresses) {
        const MapsLine* mapping = find_mapping(maps, address);
        if (mapping == nullptr) {
            std::fprintf(stderr, "pfn: %#llx is not mapped in process %d: see /proc/%d/maps for its mappings\n",
                         static_cast<unsigned long long>(address), pid, pid);
            status = kExitFailure;
            continue;
        }
        // One 64-bit entry per virtual page: page number address / page size, at 8 times that.
        const std::uint64_t page_number = address / page_size;
        std::uint64_t entry = 0;
        ssize_t got = ::pread(pagemap.get(), &entry, sizeof entry, static_cast<off_t>(page_number * sizeof entry));
        if (got == -1)
            throw_errno("pread(\"" + pagemap_path + "\")", open_hint(errno, pid));
        if (got != static_cast<ssize_t>(sizeof entry))
            throw Failure("process " + std::to_string(pid) + " exited while pfn was reading its pagemap");

        std::string frame;
        if ((entry & (kPresent | kSwapped)) == 0 && is_pfnmap(pid, mapping->start)) {
            frame = "frame not shown (VM_PFNMAP)";
            std::fprintf(stderr,
                         "pfn: %#llx: a VM_PFNMAP mapping (VmFlags pf in /proc/%d/smaps): the kernel maps it by "
                         "frame number, without page structures, and pagemap does not look inside it: it says "
                         "\"not present\" for every page of it, touched or not, so its frames cannot be shown\n",
                         static_cast<unsigned long long>(address), pid);
            status = kExitFailure;
        } else if ((entry & kPresent) == 0) {
            frame = (entry & kSwapped) != 0 ? "swapped out" : "not present";
            std::fprintf(stderr,
                         "pfn: %#llx: the page is %s: no frame is behind it now; it gets one when the "
                         "process touches it (reads or writes a byte of it): do that, then run pfn again\n",
                         static_cast<unsigned long long>(address), frame.c_str());
            status = kExitFailure;
        } else if ((entry & kPfnMask) == 0) {
            frame = "PFN hidden";
            if (!hidden_said)
                std::fprintf(stderr, "pfn: PFNs are hidden: the kernel shows them only to CAP_SYS_ADMIN "
                                     "(since Linux 4.2, against Rowhammer-style attacks): run pfn as root\n");
            hidden_said = true;
            status = kExitFailure;
        } else {
            char text[40];
            std::snprintf(text, sizeof text, "PFN %#llx", static_cast<unsigned long long>(entry & kPfnMask));
            frame = text;
        }
        std::printf("pid %d %#llx: %s, in %s\n", pid, static_cast<unsigned long long>(address), frame.c_str(),
                    mapping->text.c_str());
    }
    return status;
}

} // namespace

/// Parses the command line with getopt_long(3) and runs; run_main() turns failures into exit
/// statuses.
int main(int argc, char** argv) {
    return run_main("pfn", [&] {
        static const option long_options[] = {{"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
        opterr = 0; // our own message, in the project's format
        int option_char = 0;
        while ((option_char = ::getopt_long(argc, argv, "+h", long_options, nullptr)) != -1) {
            if (option_char == 'h') {
                std::fputs(kUsage, stdout);
                return static_cast<int>(kExitSuccess);
            }
            throw UsageError(std::string("unknown option '") + argv[optind - 1] + "'");
        }
        if (argc - optind < 2)
            throw UsageError("wants a PID and at least one ADDRESS");
        pid_t pid = parse_pid(argv[optind]);
        std::vector<std::uint64_t> addresses;
        for (int i = optind + 1; i < argc; ++i)
            addresses.push_back(parse_address(argv[i]));
        return run(pid, addresses);
    });
}
