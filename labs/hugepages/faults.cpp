/// @file labs/hugepages/faults.cpp
/// @brief Lab hugepages: fault in shared memory with 4 KiB pages, with hugetlb pages
///        (`SHM_HUGETLB`, `MFD_HUGETLB`) and with transparent huge pages on tmpfs; count the page
///        faults (`getrusage(2)`) and time them.
///
/// Usage: `faults [--size BYTES] [--reserve] [--quiet] [CASE...]`, CASE one of `4k`,
/// `shm-hugetlb`, `mfd-hugetlb`, `thp` (default: all).
///
///     build/labs/hugepages/faults --size 1G --reserve    as root: reserves huge pages, restores after
///     build/labs/hugepages/faults --size 64M 4k thp       no root needed
///
/// The calls it teaches: `memfd_create(2)` with and without `MFD_HUGETLB`; `shmget(2)` with
/// `SHM_HUGETLB`; `madvise(2)` `MADV_HUGEPAGE`/`MADV_NOHUGEPAGE`; `mount(2)` of a tmpfs with
/// `huge=always` in a private mount namespace (`unshare(2)`) when the machine's shmem THP setting
/// is `never`; `getrusage(2)` for the fault count; `/proc/meminfo` (`HugePages_*`,
/// `ShmemHugePages`) and `/proc/self/smaps_rollup` (`ShmemPmdMapped`) to see which pages came.
/// With `--reserve` (root only) it writes `/proc/sys/vm/nr_hugepages` and puts the old value back
/// when it ends, on every path but SIGKILL; each case runs in a forked child, so even a case that
/// crashes cannot skip the restore.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: faults [OPTIONS] [CASE...]

Lab hugepages. Maps --size bytes of shared memory, writes one byte in every 4 KiB, and
prints on standard output how many page faults that took and how long. Cases (default:
all):

  4k            a memfd with 4 KiB pages (MADV_NOHUGEPAGE)
  shm-hugetlb   a System V segment with SHM_HUGETLB (2 MiB pages from the hugetlb pool)
  mfd-hugetlb   a memfd with MFD_HUGETLB (the same pool)
  thp           transparent huge pages on tmpfs: a memfd where the machine's
                shmem_enabled allows it, else a tmpfs mounted with huge=always in a
                private mount namespace

Options:
  --size BYTES  how much to fault in, a multiple of 2 MiB; K, M and G suffixes
                (default 1G)
  --reserve     root only: set vm.nr_hugepages so the hugetlb cases have their pages,
                and restore the old value at the end
  --quiet       no narration on standard error
  --help        show this help

Exit status: 0 every case ran; 1 a failure; 2 a usage error; 77 a case could not run
here (no huge pages to be had: the line says why) and none failed.
)";

constexpr std::size_t kHugePage = 2 << 20;
constexpr std::size_t kSmallPage = 4096;

std::string read_text(const std::string& path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    std::string value = text.str();
    while (!value.empty() && value.back() == '\n')
        value.pop_back();
    return value;
}

/// One field of /proc/meminfo ("HugePages_Free"), in its unit (pages or kB).
long long meminfo(const std::string& field) {
    std::ifstream file("/proc/meminfo");
    std::string name;
    long long value = 0;
    while (file >> name >> value) {
        if (name == field + ":")
            return value;
        file.ignore(256, '\n');
    }
    return -1;
}

/// The hugetlb counters, as a narration line shows them.
std::string hugetlb_counters() {
    return "HugePages_Total=" + std::to_string(meminfo("HugePages_Total")) +
           " Free=" + std::to_string(meminfo("HugePages_Free")) + " Rsvd=" + std::to_string(meminfo("HugePages_Rsvd"));
}

/// ShmemPmdMapped of this process: shared memory mapped with 2 MiB page-table entries (THP).
long long shmem_pmd_mapped_kib() {
    std::ifstream file("/proc/self/smaps_rollup");
    std::string name;
    long long value = 0;
    while (file >> name) {
        if (name == "ShmemPmdMapped:" && file >> value)
            return value;
        file.ignore(256, '\n');
    }
    return 0;
}

/// What one case measured.
struct Measurement {
    long faults = 0;
    double seconds = 0;
};

/// Writes one byte in every 4 KiB of the mapping and counts the faults that took (minor faults:
/// no disk is involved, the kernel only finds or allocates a page and maps it).
Measurement touch(void* base, std::size_t size) {
    rusage before{}, after{};
    ::getrusage(RUSAGE_SELF, &before);
    const auto start = std::chrono::steady_clock::now();
    auto* bytes = static_cast<volatile unsigned char*>(base);
    for (std::size_t offset = 0; offset < size; offset += kSmallPage)
        bytes[offset] = 1;
    const auto elapsed = std::chrono::steady_clock::now() - start;
    ::getrusage(RUSAGE_SELF, &after);
    return {after.ru_minflt - before.ru_minflt, std::chrono::duration<double>(elapsed).count()};
}

/// The finding line on standard output.
void report(const char* name, const char* pages, std::size_t size, const Measurement& m) {
    const double mib = static_cast<double>(size) / (1 << 20);
    std::printf("%-12s %-32s %9ld faults %9.3f s %8.0f ns/fault %8.0f MiB/s\n", name, pages, m.faults, m.seconds,
                m.faults > 0 ? m.seconds * 1e9 / static_cast<double>(m.faults) : 0.0,
                m.seconds > 0 ? mib / m.seconds : 0.0);
    std::fflush(stdout);
}

/// The hugetlb pool has no free pages for `size`: the reason a case cannot run.
[[noreturn]] void no_huge_pages(const std::string& call, int error_number, std::size_t size) {
    throw Unsupported(call + ": " + std::strerror(error_number) + ": " + std::to_string(size / kHugePage) +
                      " huge pages needed, HugePages_Free=" + std::to_string(meminfo("HugePages_Free")) +
                      ": reserve them as root (--reserve, or sysctl vm.nr_hugepages)");
}

// ----- the cases ------------------------------------------------------------------------------

int case_4k(std::size_t size, const Narrator& say) {
    UniqueFd fd(::memfd_create("lab-4k", MFD_CLOEXEC));
    if (!fd)
        throw_errno("memfd_create(\"lab-4k\", MFD_CLOEXEC)");
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate");
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(MAP_SHARED)");
    Mapping mapping(base, size);
    // Where the machine enables THP for shmem, a memfd could get huge pages too: ask for small.
    if (::madvise(base, size, MADV_NOHUGEPAGE) == -1)
        throw_errno("madvise(MADV_NOHUGEPAGE)");
    say.say("memfd_create(\"lab-4k\", MFD_CLOEXEC), ftruncate(%zu), mmap(MAP_SHARED), madvise(MADV_NOHUGEPAGE)", size);
    Measurement m = touch(base, size);
    say.say("4k: %ld faults: one per 4 KiB page", m.faults);
    report("4k", "4 KiB pages", size, m);
    return kExitSuccess;
}

int case_shm_hugetlb(std::size_t size, const Narrator& say) {
    // SHM_HUGETLB: the segment's pages come from the hugetlb pool (vm.nr_hugepages), reserved
    // now. Without free huge pages: ENOMEM; without CAP_IPC_LOCK or membership of
    // vm.hugetlb_shm_group: EPERM.
    int id = ::shmget(IPC_PRIVATE, size, IPC_CREAT | SHM_HUGETLB | 0600);
    if (id == -1) {
        const int error_number = errno;
        const std::string call = "shmget(IPC_PRIVATE, " + std::to_string(size) + ", IPC_CREAT|SHM_HUGETLB|0600)";
        if (error_number == ENOMEM)
            no_huge_pages(call, error_number, size);
        if (error_number == EPERM)
            throw Unsupported(call + ": " + std::strerror(error_number) +
                              ": SHM_HUGETLB needs CAP_IPC_LOCK or the group in /proc/sys/vm/hugetlb_shm_group");
        throw_error(error_number, call);
    }
    void* base = ::shmat(id, nullptr, 0);
    const int error_number = errno;
    // Remove it now: the segment lives until the last detach, and a crash cannot leave it behind.
    ::shmctl(id, IPC_RMID, nullptr);
    if (base == reinterpret_cast<void*>(-1))
        throw_error(error_number, "shmat(" + std::to_string(id) + ")");
    ShmAttachment attachment(base);
    say.say("shmget(IPC_PRIVATE, %zu, IPC_CREAT|SHM_HUGETLB|0600) = %d, shmat, shmctl(IPC_RMID): %s", size, id,
            hugetlb_counters().c_str());
    Measurement m = touch(base, size);
    say.say("shm-hugetlb: %ld faults: one per 2 MiB page; %s", m.faults, hugetlb_counters().c_str());
    report("shm-hugetlb", "2 MiB hugetlb pages (SHM_HUGETLB)", size, m);
    return kExitSuccess;
}

int case_mfd_hugetlb(std::size_t size, const Narrator& say) {
    UniqueFd fd(::memfd_create("lab-hugetlb", MFD_CLOEXEC | MFD_HUGETLB));
    if (!fd) {
        if (errno == EINVAL || errno == ENOENT)
            throw Unsupported(std::string("memfd_create(MFD_HUGETLB): ") + std::strerror(errno) +
                              ": this kernel has no hugetlbfs (CONFIG_HUGETLBFS)");
        throw_errno("memfd_create(\"lab-hugetlb\", MFD_CLOEXEC|MFD_HUGETLB)");
    }
    // The size must be a multiple of the huge page size.
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate(" + std::to_string(size) + ")");
    // The huge pages are reserved here, at mmap: ENOMEM when the pool has too few.
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED) {
        if (errno == ENOMEM)
            no_huge_pages("mmap(" + std::to_string(size) + ", MAP_SHARED) of a MFD_HUGETLB memfd", errno, size);
        throw_errno("mmap(MAP_SHARED)");
    }
    Mapping mapping(base, size);
    say.say("memfd_create(\"lab-hugetlb\", MFD_CLOEXEC|MFD_HUGETLB), ftruncate(%zu), mmap(MAP_SHARED): %s", size,
            hugetlb_counters().c_str());
    Measurement m = touch(base, size);
    say.say("mfd-hugetlb: %ld faults; %s", m.faults, hugetlb_counters().c_str());
    report("mfd-hugetlb", "2 MiB hugetlb pages (MFD_HUGETLB)", size, m);
    return kExitSuccess;
}

/// Enters a private mount namespace (inside a user namespace when not root) and mounts a tmpfs
/// with huge=always over /dev/shm there; returns false where that is not allowed.
bool mount_huge_tmpfs(std::size_t size, const Narrator& say) {
    const bool root = ::geteuid() == 0; // (inside the user namespace, everyone is root)
    if (root) {
        if (::unshare(CLONE_NEWNS) == -1)
            return false;
    } else {
        const uid_t uid = ::geteuid();
        const gid_t gid = ::getegid();
        if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) == -1)
            return false;
        std::ofstream("/proc/self/setgroups") << "deny";
        std::ofstream("/proc/self/uid_map") << "0 " << uid << " 1";
        std::ofstream("/proc/self/gid_map") << "0 " << gid << " 1";
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == -1)
        throw_errno("mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE)");
    const std::string options = "huge=always,size=" + std::to_string(size / 1024 + 4096) + "k,mode=1777";
    if (::mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == -1)
        throw_errno("mount(\"tmpfs\", \"/dev/shm\", \"tmpfs\", MS_NOSUID|MS_NODEV, \"" + options + "\")");
    say.say("unshare(CLONE_NEWNS%s), mount(\"tmpfs\", \"/dev/shm\", \"tmpfs\", MS_NOSUID|MS_NODEV, \"%s\") = 0",
            root ? "" : "|CLONE_NEWUSER: not root, so in a user namespace", options.c_str());
    return true;
}

int case_thp(std::size_t size, const Narrator& say) {
    // The machine's setting for shmem (memfd, shmget, MAP_SHARED|MAP_ANONYMOUS): the word in
    // brackets. always/within_size/force: huge pages where they fit; advise: with MADV_HUGEPAGE;
    // never: none; deny: none, not even on a tmpfs mounted with huge=.
    const std::string setting_line = read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    const std::string::size_type open = setting_line.find('['), close = setting_line.find(']');
    const std::string setting =
        open == std::string::npos ? "" : setting_line.substr(open + 1, close - open - 1);
    say.say("/sys/kernel/mm/transparent_hugepage/shmem_enabled: %s", setting_line.c_str());
    if (setting.empty())
        throw Unsupported("no /sys/kernel/mm/transparent_hugepage/shmem_enabled: a kernel without THP "
                          "(CONFIG_TRANSPARENT_HUGEPAGE)");
    if (setting == "deny")
        throw Unsupported("shmem_enabled is deny: no transparent huge pages for shared memory at all");
    UniqueFd fd;
    const char* route = "";
    if (setting == "never") {
        // The setting is system-wide; a tmpfs of our own, in our own mount namespace, has its own.
        if (!mount_huge_tmpfs(size, say))
            throw Unsupported(std::string("shmem_enabled is never, and unshare(CLONE_NEWNS) for a tmpfs with "
                                          "huge=always failed: ") + std::strerror(errno));
        fd = UniqueFd(::shm_open("/lab-thp", O_RDWR | O_CREAT | O_EXCL, 0600));
        if (!fd)
            throw_errno("shm_open(\"/lab-thp\", O_RDWR|O_CREAT|O_EXCL, 0600)");
        ::shm_unlink("/lab-thp"); // the mapping keeps it; nothing is left behind
        route = "THP, tmpfs huge=always";
    } else {
        fd = UniqueFd(::memfd_create("lab-thp", MFD_CLOEXEC));
        if (!fd)
            throw_errno("memfd_create(\"lab-thp\", MFD_CLOEXEC)");
        route = "THP, memfd";
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) == -1)
        throw_errno("ftruncate");
    // A huge page needs a 2 MiB-aligned virtual address: map 2 MiB more and use an aligned part.
    void* reserved = ::mmap(nullptr, size + kHugePage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (reserved == MAP_FAILED)
        throw_errno("mmap(PROT_NONE)");
    Mapping reservation(reserved, size + kHugePage);
    auto aligned = (reinterpret_cast<std::uintptr_t>(reserved) + kHugePage - 1) & ~(kHugePage - 1);
    void* base = ::mmap(reinterpret_cast<void*>(aligned), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                        fd.get(), 0);
    if (base == MAP_FAILED)
        throw_errno("mmap(MAP_SHARED|MAP_FIXED, 2 MiB aligned)");
    if (::madvise(base, size, MADV_HUGEPAGE) == -1) // needed with "advise", harmless otherwise
        throw_errno("madvise(MADV_HUGEPAGE)");
    say.say("%s: mmap at a 2 MiB boundary (%p), madvise(MADV_HUGEPAGE)", route, base);
    const long long shmem_huge_before = meminfo("ShmemHugePages");
    Measurement m = touch(base, size);
    const long long pmd_mapped = shmem_pmd_mapped_kib();
    say.say("thp: %ld faults; ShmemPmdMapped=%lld kB in this process, ShmemHugePages %+lld kB", m.faults, pmd_mapped,
            meminfo("ShmemHugePages") - shmem_huge_before);
    const std::string pages = pmd_mapped > 0 ? std::string("2 MiB pages (") + route + ")"
                                             : std::string("4 KiB pages (") + route + ": none came)";
    report("thp", pages.c_str(), size, m);
    return kExitSuccess;
}

// ----- the reservation ------------------------------------------------------------------------

/// Sets vm.nr_hugepages (a system-wide setting) and restores it when destroyed: on return, on an
/// exception, and on SIGINT/SIGTERM (they unwind through run_main). Only SIGKILL escapes it.
class HugePagesReservation {
public:
    HugePagesReservation(long long wanted, const Narrator& say) : say_(say) {
        original_ = std::stoll(read_text(kPath));
        write(wanted);
        say_.say("echo %lld > %s (was %lld; restored at the end): %s", wanted, kPath, original_,
                 hugetlb_counters().c_str());
    }
    HugePagesReservation(const HugePagesReservation&) = delete;
    HugePagesReservation& operator=(const HugePagesReservation&) = delete;
    ~HugePagesReservation() {
        try {
            write(original_);
            say_.say("echo %lld > %s: restored; %s", original_, kPath, hugetlb_counters().c_str());
        } catch (const std::exception& e) {
            std::fprintf(stderr, "faults: could not restore %s to %lld: %s\n", kPath, original_, e.what());
        }
    }

private:
    static constexpr const char* kPath = "/proc/sys/vm/nr_hugepages";
    static void write(long long value) {
        UniqueFd fd(::open(kPath, O_WRONLY | O_CLOEXEC));
        if (!fd)
            throw_errno(std::string("open(\"") + kPath + "\", O_WRONLY)");
        const std::string text = std::to_string(value);
        if (::write(fd.get(), text.data(), text.size()) == -1)
            throw_errno(std::string("write(\"") + kPath + "\", " + text + ")");
    }
    const Narrator& say_;
    long long original_ = 0;
};

/// Runs one case in a forked child and returns its exit status.
int run_case(const std::string& name, std::size_t size, const Narrator& say) {
    const std::function<int(std::size_t, const Narrator&)> body =
        name == "4k" ? case_4k : name == "shm-hugetlb" ? case_shm_hugetlb : name == "mfd-hugetlb" ? case_mfd_hugetlb : case_thp;
    std::fflush(stdout);
    pid_t child = ::fork();
    if (child == -1)
        throw_errno("fork");
    if (child == 0) {
        int status = run_main("faults", [&] {
            try {
                return body(size, say);
            } catch (const Unsupported& e) {
                std::printf("%-12s skipped: %s\n", name.c_str(), e.what());
                std::fflush(stdout);
                throw;
            }
        });
        std::fflush(stdout);
        ::_exit(status);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) == -1) {
        if (errno != EINTR)
            throw_errno("waitpid");
        if (stop_signal() != 0) {
            // The child only records the signal (it inherited the handlers): end it, then unwind,
            // which restores the reservation.
            ::kill(child, SIGKILL);
            ::waitpid(child, &status, 0);
            throw_if_stopped();
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : kExitFailure;
}

std::size_t parse_size(const std::string& text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text.c_str(), &end, 10);
    std::string suffix = end;
    if (text.empty() || text[0] == '-' || errno != 0 || end == text.c_str())
        throw UsageError("--size: expected a number of bytes, not \"" + text + "\"");
    if (suffix == "K" || suffix == "k")
        value <<= 10;
    else if (suffix == "M" || suffix == "m")
        value <<= 20;
    else if (suffix == "G" || suffix == "g")
        value <<= 30;
    else if (!suffix.empty())
        throw UsageError("--size: unknown suffix \"" + suffix + "\" (K, M or G)");
    if (value == 0 || value % kHugePage != 0 || value > (64ULL << 30))
        throw UsageError("--size: expected a multiple of 2 MiB, up to 64G");
    return static_cast<std::size_t>(value);
}

} // namespace

int main(int argc, char** argv) {
    return run_main("faults", [&] {
        std::size_t size = 1ULL << 30;
        bool reserve = false;
        OptionSpec spec;
        spec.usage = kUsage;
        spec.operands = true;
        spec.extra.push_back({"--size", true, [&](const std::string& value) { size = parse_size(value); }});
        spec.extra.push_back({"--reserve", false, [&](const std::string&) { reserve = true; }});
        Options options = parse_options(argc, argv, spec);
        if (options.help)
            return static_cast<int>(kExitSuccess);
        std::vector<std::string> cases = options.operands;
        if (cases.empty())
            cases = {"4k", "shm-hugetlb", "mfd-hugetlb", "thp"};
        for (const std::string& name : cases)
            if (name != "4k" && name != "shm-hugetlb" && name != "mfd-hugetlb" && name != "thp")
                throw UsageError("unknown case \"" + name + "\": expected 4k, shm-hugetlb, mfd-hugetlb or thp");
        Narrator say("faults", options.quiet);
        install_stop_handlers();
        say.say("%zu MiB per case; before: %s ShmemHugePages=%lld kB", size >> 20, hugetlb_counters().c_str(),
                meminfo("ShmemHugePages"));

        std::unique_ptr<HugePagesReservation> reservation;
        const bool hugetlb = std::find_if(cases.begin(), cases.end(), [](const std::string& c) {
                                 return c == "shm-hugetlb" || c == "mfd-hugetlb";
                             }) != cases.end();
        if (reserve && hugetlb) {
            if (::geteuid() != 0)
                say.say("--reserve: not root, so vm.nr_hugepages (system-wide) stays as it is");
            else
                reservation = std::make_unique<HugePagesReservation>(
                    meminfo("HugePages_Total") - meminfo("HugePages_Free") + static_cast<long long>(size / kHugePage), say);
        }
        bool failed = false, skipped = false;
        for (const std::string& name : cases) {
            const int status = run_case(name, size, say);
            failed = failed || (status != kExitSuccess && status != kExitUnsupported);
            skipped = skipped || status == kExitUnsupported;
        }
        reservation.reset(); // restore before the last narration line
        say.say("after: %s ShmemHugePages=%lld kB", hugetlb_counters().c_str(), meminfo("ShmemHugePages"));
        return static_cast<int>(failed ? kExitFailure : skipped ? kExitUnsupported : kExitSuccess);
    });
}
