// EXERCISE 01-sysv/3: claim the segment: one reader only, and a token the kernel returns when the reader dies (robustness)
// This is 01-sysv/reader.cpp with the calls it teaches cut out: find the TODO below, write
// them, then run make exercise-01 (it builds this file and runs the chapter's tests).
// The solution is 01-sysv/reader.cpp: read it only once your version passes.

/// @file 01-sysv/reader.cpp
/// @brief Chapter 01 reader: finds the writer's System V segment and semaphore set by key,
///        claims the segment, and copies every block it is handed to standard output.
///
/// Usage: `reader [--name PATH] [--timeout SECONDS] [--quiet]`
///
/// Run it with its companion, `writer`, in another terminal (either may start first):
///
///     terminal 1: build/01-sysv/writer "hello, shared memory"
///     terminal 2: build/01-sysv/reader
///
/// The calls it teaches, in order: `ftok(3)` on the same path gives the same key (after
/// `lstat(2)`: a symbolic link is refused, never followed); `semget(2)` and then `shmget(2)`,
/// with no `IPC_CREAT`, find the writer's objects, the set first; `semctl(IPC_STAT)` tells an
/// initialised set (`sem_otime` set) from a half-made one, and its creator; `shmctl(IPC_STAT)`
/// gives the real size of the segment, which the header is checked against; `shmat(2)` with
/// `SHM_RDONLY` maps it read-only; one `semop(2)` claims the segment and takes the "reader alive"
/// token together; `semtimedop(2)` waits for each block, in one-second slices that notice a
/// dead writer; and if the writer died, `shmctl(IPC_RMID)` and `semctl(IPC_RMID)` remove what it
/// left.
///
/// Step 1 of the chapter, hello_reader.cpp, makes the same calls with none of the robustness.
#include <cerrno>
#include <cstdio>
#include <string>

#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "error.hpp"
#include "layout.hpp"
#include "narrate.hpp"
#include "options.hpp"
#include "owners.hpp"
#include "protocol.hpp"
#include "stream.hpp"
#include "wait.hpp"

using namespace shmtut;

namespace {

const char* const kUsage = R"(Usage: reader [OPTIONS]

Chapter 01, System V shared memory. Finds the segment and the semaphore set that the
writer created under the key ftok(PATH), claims the segment (one reader per writer),
and writes every byte the writer sends to standard output. Waits for a writer that has
not started yet, up to the timeout.

Options:
  --name PATH        the writer's key file (default /tmp/shm-tutorial-01.key)
  --timeout SECONDS  how long to wait for the writer to appear (default 60); once the
                     stream runs, the reader waits as long as the writer lives
  --quiet            no narration on standard error
  --help             show this help

Exit status: 0 the whole stream arrived; 1 a runtime failure (no writer, a refused
header, another reader, the writer died); 2 a usage error.
)";

const char* const kStartWriter = "is the writer running? start it first";

/// What the reader knows of the writer's objects, as it finds them.
struct WriterObjects {
    std::string key_file;
    sysv::KeyFileIdentity key_file_identity; ///< st_dev and st_ino of key_file, whole
    key_t key = -1;
    int semid = -1;
    int shmid = -1;
};

/// The writer died: it cannot remove its objects any more, so the reader does, and says so.
/// It removes only what that writer made: the segment it finds by key only if the dead writer
/// created it (`shm_cpid`), and the key file only if a writer made it (it holds the marker), it
/// is still the file the key came from, and no new writer's set has taken the key meanwhile.
[[noreturn]] void writer_died(WriterObjects& writer, const char* when, const Narrator& say) {
    int writer_pid = sysv::semaphore_pid(writer.semid, sysv::kWriterAlive); // it took the token, its exit gave it back
    say.say("the writer (pid %d) is gone: semaphore 0 'writer alive' is 0; removing what it left", writer_pid);
    if (writer.shmid == -1) {
        int shmid = ::shmget(writer.key, 0, 0); // not found: already marked for removal, or never made
        shmid_ds info{};
        if (shmid != -1 && ::shmctl(shmid, IPC_STAT, &info) == 0 && info.shm_cpid == writer_pid)
            writer.shmid = shmid;
    }
    if (writer.shmid != -1)
        sysv::narrate_cleanup(say, "shmctl(shmid=" + std::to_string(writer.shmid) + ", IPC_RMID)",
                              ::shmctl(writer.shmid, IPC_RMID, nullptr), "the dead writer's segment");
    sysv::narrate_cleanup(say, "semctl(semid=" + std::to_string(writer.semid) + ", 0, IPC_RMID)",
                          ::semctl(writer.semid, 0, IPC_RMID), "the dead writer's semaphore set");
    if (sysv::is_writer_key_file(writer.key_file) && ::ftok(writer.key_file.c_str(), sysv::kProjectId) == writer.key &&
        ::semget(writer.key, 0, 0) == -1 && errno == ENOENT)
        sysv::narrate_cleanup(say, "unlink(\"" + writer.key_file + "\")", ::unlink(writer.key_file.c_str()),
                              "the dead writer's key file");
    throw Failure("the writer (pid " + std::to_string(writer_pid) + ") died " + when +
                  "; removed the segment and the semaphore set it left");
}

/// "Writer alive" is 0 before this reader claimed anything: the writer died, or it finished
/// and left its objects on purpose (`--keep`). A kept segment is still found by key (only a
/// segment a reader claimed is marked for removal) and its header says the stream ended; then
/// there is nothing to read and nothing to clean up: the objects are there to be looked at.
[[noreturn]] void writer_not_running(WriterObjects& writer, const Narrator& say) {
    int shmid = ::shmget(writer.key, 0, 0);
    void* base = shmid == -1 ? reinterpret_cast<void*>(-1) : ::shmat(shmid, nullptr, SHM_RDONLY);
    if (base != reinterpret_cast<void*>(-1)) {
        shmid_ds info{};
        bool ended = false;
        if (::shmctl(shmid, IPC_STAT, &info) == 0 && info.shm_segsz >= kHeaderSize) {
            HeaderSnapshot header = take_snapshot(*static_cast<const SharedHeader*>(base));
            ended = header.magic == kHeaderMagic && header.end_of_stream == 1;
        }
        if (::shmdt(base) == -1)
            throw_errno("shmdt(" + sysv::pointer_text(base) + ")");
        if (ended) {
            const std::string key_text = sysv::key_text(writer.key);
            throw Failure("the stream under this key has already ended: its writer (pid " +
                          std::to_string(sysv::semaphore_pid(writer.semid, sysv::kWriterAlive)) +
                          ") finished and kept its objects (--keep), so there is nothing to read; look with "
                          "'ipcs -m -s', remove them with 'ipcrm -M " + key_text + " -S " + key_text + "'");
        }
    }
    writer_died(writer, "before the stream started", say);
}

/// Says once that the reader is waiting, the first time something is not there yet.
void narrate_waiting(bool& said, const Deadline& deadline, const Narrator& say) {
    if (!said)
        say.say("waiting up to %s for a writer: start %s", seconds_text(deadline.seconds()).c_str(), sibling_program("writer").c_str());
    said = true;
}

[[noreturn]] void another_reader(const WriterObjects& writer) {
    throw Failure("another reader (pid " + std::to_string(sysv::semaphore_pid(writer.semid, sysv::kReaderAlive)) +
                  ") has already claimed this writer's segment: one writer serves one reader");
}

/// Finds the writer's key, semaphore set and segment, in that order, waiting (bounded) for each
/// to appear. The set comes before the segment: the writer creates it first, and while the
/// reader waits for the segment the set tells it whether the writer still lives.
WriterObjects find_writer(const Options& options, const Deadline& deadline, const Narrator& say) {
    WriterObjects writer;
    writer.key_file = options.name;
    bool said_waiting = false;
    std::string hint = std::string("nothing appeared within ") + seconds_text(deadline.seconds()) + ": " + kStartWriter;

    // 1. The key: the writer creates the key file if it is missing, so wait for it. A symbolic
    //    link at the path is refused, never followed (ftok would follow it).
    const std::string make_key = "ftok(\"" + options.name + "\", 'S')";
    for (;;) {
        sysv::refuse_symbolic_link(options.name);
        writer.key = ::ftok(options.name.c_str(), sysv::kProjectId);
        if (writer.key != -1)
            break;
        if (errno != ENOENT)
            throw_errno(make_key);
        if (deadline.expired())
            throw_error(ENOENT, make_key, hint);
        narrate_waiting(said_waiting, deadline, say);
        pause_briefly();
        throw_if_stopped();
    }
    say.say("%s = %s", make_key.c_str(), sysv::key_text(writer.key).c_str());
    // The key keeps 24 bits of the file's identity; the whole of it is compared with what the
    // writer recorded in the header (step 4, in attach_and_validate()).
    writer.key_file_identity = sysv::key_file_identity(options.name);
    const std::string key_text = sysv::key_text(writer.key);

    // 2. The semaphore set, initialised: semget() succeeds as soon as the writer created it,
    //    before SETALL; the writer's first semop() sets sem_otime, so sem_otime != 0 means ready.
    //    A set another user created is refused (IPC_STAT tells its creator, cuid).
    const std::string find_set = "semget(key=" + key_text + ", 0, 0)";
    for (;;) {
        writer.semid = ::semget(writer.key, 0, 0);
        if (writer.semid == -1 && errno != ENOENT)
            throw_errno(find_set, errno == EACCES ? "the objects under this key belong to another user" : "");
        if (writer.semid != -1) {
            const std::string stat = "semctl(semid=" + std::to_string(writer.semid) + ", 0, IPC_STAT)";
            semid_ds info{};
            sysv::semun arg{};
            arg.buf = &info;
            if (::semctl(writer.semid, 0, IPC_STAT, arg) == -1) {
                // Another user's set (mode 0600) refuses IPC_STAT: say whose it is.
                const int error = errno;
                const uid_t owner = error == EACCES ? sysv::set_owner(writer.semid) : static_cast<uid_t>(-1);
                throw_error(error, stat,
                            owner != static_cast<uid_t>(-1)
                                ? another_users_name("the semaphore set under this key", options.name, owner)
                                : "");
            }
            if (info.sem_perm.cuid != ::geteuid())
                throw Failure("semaphore set " + std::to_string(writer.semid) + " was created by uid " +
                              std::to_string(info.sem_perm.cuid) + ", not by this user: refusing it; " +
                              another_users_name("it", options.name, info.sem_perm.cuid));
            if (info.sem_otime != 0)
                break;
        }
        if (deadline.expired())
            throw_error(ENOENT, find_set, hint);
        narrate_waiting(said_waiting, deadline, say);
        pause_briefly();
        throw_if_stopped();
    }
    say.say("%s = %d (initialised: sem_otime is set)", find_set.c_str(), writer.semid);

    // 3. The segment. While it is missing, the set says why: a writer that is not running, or a
    //    segment already claimed (the writer marks it for removal once a reader attaches, which
    //    hides its key).
    const std::string find_segment = "shmget(key=" + key_text + ", 0, 0)";
    for (;;) {
        if (sysv::semaphore_value(writer.semid, sysv::kWriterAlive) == 0)
            writer_not_running(writer, say);
        if (sysv::semaphore_value(writer.semid, sysv::kReaderSlot) == 0)
            another_reader(writer);
        writer.shmid = ::shmget(writer.key, 0, 0);
        if (writer.shmid != -1)
            break;
        if (errno != ENOENT)
            throw_errno(find_segment);
        if (deadline.expired())
            throw_error(ENOENT, find_segment, hint);
        narrate_waiting(said_waiting, deadline, say);
        pause_briefly();
        throw_if_stopped();
    }
    say.say("%s = %d", find_segment.c_str(), writer.shmid);
    return writer;
}

/// Two different files gave one key: the segment found is another writer's. Refused before the
/// claim, so that writer keeps its segment for its own reader.
[[noreturn]] void ftok_collision(const WriterObjects& writer, const sysv::KeyFileIdentity& recorded) {
    throw Failure("segment " + std::to_string(writer.shmid) + " refused: it belongs to another key file (" +
                  sysv::identity_text(recorded) + "), not to " + writer.key_file + " (" +
                  sysv::identity_text(writer.key_file_identity) + "): an ftok collision, both give the key " +
                  sysv::key_text(writer.key) + " since ftok keeps only the low 8 bits of the device and the low 16 "
                  "bits of the inode; give the writer and the reader a key file whose inode differs in its low 16 "
                  "bits or that is on another file system");
}

/// Attaches read-only and validates a local copy of the header against the segment's real size,
/// which comes from the kernel (IPC_STAT), never from the header, then checks that the segment
/// is the one of this reader's key file: the writer recorded its key file's identity in the
/// header's chapter area (see protocol.hpp).
ShmAttachment attach_and_validate(WriterObjects& writer, const Deadline& deadline, std::uint64_t& capacity,
                                  const Narrator& say) {
    const std::string stat = "shmctl(shmid=" + std::to_string(writer.shmid) + ", IPC_STAT)";
    shmid_ds info{};
    if (::shmctl(writer.shmid, IPC_STAT, &info) == -1)
        throw_errno(stat);
    say.say("%s = 0: size=%zu nattch=%lu cpid=%d mode=0%o", stat.c_str(), static_cast<std::size_t>(info.shm_segsz),
            static_cast<unsigned long>(info.shm_nattch), info.shm_cpid, info.shm_perm.mode & 0777u);
    if (info.shm_perm.cuid != ::geteuid())
        throw Failure("segment " + std::to_string(writer.shmid) + " was created by uid " +
                      std::to_string(info.shm_perm.cuid) + ", not by this user: refusing it");

    // SHM_RDONLY: this reader never writes the segment, so it maps it without write access.
    const std::string attach = "shmat(shmid=" + std::to_string(writer.shmid) + ", NULL, SHM_RDONLY)";
    void* base = ::shmat(writer.shmid, nullptr, SHM_RDONLY);
    if (base == reinterpret_cast<void*>(-1))
        throw_errno(attach);
    ShmAttachment attachment(base);
    say.say("%s = %p", attach.c_str(), base);

    const auto& header = *static_cast<const SharedHeader*>(base);
    if (info.shm_segsz < kHeaderSize)
        throw LayoutError("segment refused: " + std::to_string(info.shm_segsz) + " bytes, smaller than the header");
    while (!header_ready(header)) { // the writer stores the magic last
        if (sysv::semaphore_value(writer.semid, sysv::kWriterAlive) == 0)
            writer_died(writer, "before it published the header", say);
        if (deadline.expired())
            throw Failure("the writer did not publish the segment's header within " + seconds_text(deadline.seconds()));
        pause_briefly();
        throw_if_stopped();
    }
    HeaderSnapshot snapshot = take_snapshot(header); // one copy; validated, then used
    validate_header(snapshot, info.shm_segsz);
    sysv::KeyFileIdentity recorded = sysv::load_key_file_identity(header); // after the magic: one copy
    if (recorded != writer.key_file_identity)
        ftok_collision(writer, recorded);
    capacity = snapshot.data_capacity;
    say.say("header valid: magic=0x%08x version=%u data_capacity=%llu writer_pid=%u", snapshot.magic,
            snapshot.version, static_cast<unsigned long long>(capacity), snapshot.writer_pid);
    return attachment;
}

/// Claims the segment and takes the "reader alive" token in one atomic semop(): both happen or
/// neither does. IPC_NOWAIT: a slot already taken means another reader, not something to wait for.
void claim(const WriterObjects& writer, const Narrator& say) {
    const std::string call = "semop(semid=" + std::to_string(writer.semid) +
                             ", {sem 1 'reader slot' -1, IPC_NOWAIT}, {sem 2 'reader alive' +1, SEM_UNDO})";
    // TODO(exercise 3): one semop(2) on writer.semid with two operations, applied together or
    // not at all (man 2 semop):
    //   - sysv::kReaderSlot, -1, IPC_NOWAIT: take the only reader slot; when it is already taken
    //     semop fails with EAGAIN instead of waiting: call another_reader(writer) then;
    //   - sysv::kReaderAlive, +1, SEM_UNDO: the "reader alive" token, which the kernel takes
    //     back when this process dies, however it dies: that is how the writer notices.
    // Any other failure: throw_errno(call).
    // Then delete the placeholder line below: until then the program stops here, at once.
    throw Failure("TODO(exercise 3): one semop: take the reader slot (IPC_NOWAIT) and the reader-alive token (SEM_UNDO)"); // placeholder
    say.say("%s = 0: claimed", call.c_str());
}

/// The hand-off: wait for "block ready", copy a local snapshot of the block header, validate it
/// against the capacity validated before (a local value: the writer may have rewritten the
/// header since), write the bytes out, post "block free". The block after the last one is
/// empty and marks the end; posting "block free" for it is the confirmation the writer waits for.
void copy_stream(WriterObjects& writer, const ShmAttachment& segment, std::uint64_t capacity, const Narrator& say) {
    const auto& header = *static_cast<const SharedHeader*>(segment.get());
    const std::uint8_t* data = data_area(segment.get());
    const std::string take_ready = "semtimedop(semid=" + std::to_string(writer.semid) + ", {sem 3 'block ready' -1})";
    const std::string post_free = "semop(semid=" + std::to_string(writer.semid) + ", {sem 4 'block free' +1})";
    std::uint64_t total = 0;
    for (std::uint64_t expected = 1;; ++expected) {
        if (sysv::take_unit(writer.semid, sysv::kBlockReady, sysv::kWriterAlive, nullptr) != sysv::Taken::kYes)
            writer_died(writer, "before the end of the stream", say);
        HeaderSnapshot block = take_snapshot(header);
        validate_block(block, capacity, expected);
        write_all(STDOUT_FILENO, data, block.block_length);
        total += block.block_length;
        sembuf block_free{sysv::kBlockFree, +1, 0};
        if (::semop(writer.semid, &block_free, 1) == -1)
            throw_errno(post_free);
        if (expected == 1)
            say.say("%s = 0: block 1, %llu bytes (further blocks quietly)", take_ready.c_str(),
                    static_cast<unsigned long long>(block.block_length));
        if (block.end_of_stream != 0) {
            say.say("end of stream: %llu bytes in %llu block(s); confirmed with %s = 0",
                    static_cast<unsigned long long>(total), static_cast<unsigned long long>(expected - 1),
                    post_free.c_str());
            return;
        }
    }
}

int run(const Options& options) {
    Narrator say("reader", options.quiet);
    install_stop_handlers();
    Deadline deadline(options.timeout_seconds);

    WriterObjects writer = find_writer(options, deadline, say);
    std::uint64_t capacity = 0;
    ShmAttachment segment = attach_and_validate(writer, deadline, capacity, say);
    claim(writer, say);
    copy_stream(writer, segment, capacity, say);

    // Detach. The writer marked the segment for removal when we claimed it, so this detach (or
    // the writer's, whichever is last) frees the memory. The semaphores are the writer's to remove.
    void* base = segment.release();
    const std::string detach = "shmdt(" + sysv::pointer_text(base) + ")";
    if (::shmdt(base) == -1)
        throw_errno(detach);
    say.say("%s = 0", detach.c_str());
    return kExitSuccess;
}

} // namespace

/// Parses the command line and runs the reader; run_main() turns failures into exit statuses.
int main(int argc, char** argv) {
    return run_main("reader", [&] {
        OptionSpec spec;
        spec.usage = kUsage;
        spec.default_name = sysv::kDefaultKeyPath;
        Options options = parse_options(argc, argv, spec);
        return options.help ? kExitSuccess : run(options);
    });
}
