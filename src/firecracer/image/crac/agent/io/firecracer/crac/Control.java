package io.firecracer.crac;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

/**
 * The control socket: firecracer's guest agent connects to {@code <notifyDir>/crac.sock}, sends one line,
 * gets one line back, and the connection is closed by this side right after the answer.
 *
 * <pre>
 *   before-snapshot N  →  beforeCheckpoint of the global context (last registered first)
 *                         "ok before-snapshot N: K resources notified in T ms"
 *                         "error before-snapshot N: RESOURCE: EXCEPTION: MESSAGE; ... (checkpoint aborted, ...)"
 *   after-restore N    →  afterRestore (first registered first); "ok after-restore N: ..." or "error ..."
 *   ping               →  "ok firecracer-crac MODE"
 * </pre>
 *
 * <p>Closing at once matters: CRIU cannot dump a process holding an established Unix connection, and the
 * guest agent dumps the JVM as soon as it has the answer (it waits for this side's EOF first). The
 * listening socket itself is fine for CRIU: after a restore the accept loop goes on.
 *
 * <p>As in CRaC, a failed {@code beforeCheckpoint} is followed at once by {@code afterRestore} (the
 * checkpoint is aborted and the application goes on running). A second {@code before-snapshot} without an
 * {@code after-restore} in between, or an {@code after-restore} without a {@code before-snapshot}, notifies
 * nobody and answers {@code ok} saying so: every restore of one snapshot starts from the checkpointed state
 * and gets exactly one {@code afterRestore}.
 *
 * <p>System properties: {@code firecracer.crac.notifyDir} (default {@code /run/firecracer/notify}, created
 * if missing) and {@code firecracer.crac.socketName} (default {@code crac.sock}; when that name is taken
 * by another live listener, {@code crac-PID.sock}).
 */
public final class Control implements Runnable {
    public static final String DIR_PROPERTY = "firecracer.crac.notifyDir";
    public static final String NAME_PROPERTY = "firecracer.crac.socketName";
    public static final String DEFAULT_DIR = "/run/firecracer/notify";
    public static final String DEFAULT_NAME = "crac.sock";
    static final int MAX_LINE = 1024;
    static final long READ_TIMEOUT_MS = 10_000;
    static final int MAX_REPLY = 2000;

    private static volatile Path bound;

    private final Hooks hooks;
    private final Path path;
    private ServerSocketChannel server;
    /** beforeCheckpoint ran and afterRestore has not yet: the resources are closed. */
    private boolean checkpointed;

    private Control(Hooks hooks, Path path) {
        this.hooks = hooks;
        this.path = path;
    }

    /** Where the control socket listens, for messages ("the firecracer CRaC agent's control socket"). */
    public static String describe() {
        Path p = bound;
        return p == null ? "the firecracer CRaC agent's control socket (not listening)" : p.toString();
    }

    /**
     * Binds the control socket and starts the daemon thread {@code firecracer-crac}. Never throws: without a
     * socket the application runs as before and only its hooks are not driven (logged).
     *
     * @param jdkHasCrac the JDK has its own {@code jdk.crac} module: drive its global context, not ours
     */
    public static void start(boolean jdkHasCrac) {
        Hooks hooks = jdkHasCrac ? new JdkHooks() : new OwnHooks();
        try {
            Path dir = Paths.get(System.getProperty(DIR_PROPERTY, DEFAULT_DIR));
            Files.createDirectories(dir);
            Path path = choosePath(dir, System.getProperty(NAME_PROPERTY, DEFAULT_NAME));
            Control c = new Control(hooks, path);
            c.bind();
            Thread t = new Thread(c, "firecracer-crac");
            t.setDaemon(true);
            t.start();
            Runtime.getRuntime().addShutdownHook(new Thread(c::unlink, "firecracer-crac-cleanup"));
            Log.info("listening on " + path + " (" + hooks.mode() + ")");
        } catch (IOException | RuntimeException e) {
            Log.info("no control socket, hooks will not run: " + oneLine(e.toString()));
        }
    }

    /** {@code name} in {@code dir}, unless another live process listens there (then {@code crac-PID.sock}). */
    private static Path choosePath(Path dir, String name) throws IOException {
        Path p = dir.resolve(name);
        if (!Files.exists(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            return p;
        }
        int mode = (Integer) Files.getAttribute(p, "unix:mode", java.nio.file.LinkOption.NOFOLLOW_LINKS);
        boolean socket = (mode & 0170000) == 0140000;
        if (socket && !listening(p)) {
            Files.delete(p);  // left by a JVM that is gone
            return p;
        }
        Path own = dir.resolve("crac-" + ProcessHandle.current().pid() + ".sock");
        Files.deleteIfExists(own);
        Log.info(p + " is " + (socket ? "another live process's socket" : "not a socket") + "; using " + own);
        return own;
    }

    private static boolean listening(Path p) {
        try (SocketChannel ch = SocketChannel.open(UnixDomainSocketAddress.of(p))) {
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    private void bind() throws IOException {
        ServerSocketChannel s = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            s.bind(UnixDomainSocketAddress.of(path), 4);
        } catch (IOException e) {
            s.close();
            throw e;
        }
        server = s;
        bound = path;
    }

    private void unlink() {
        try {
            Files.deleteIfExists(path);
        } catch (IOException e) {
            // the JVM is exiting; a stale socket is only refused by the next notification
        }
    }

    @Override
    public void run() {
        while (true) {
            try (SocketChannel ch = server.accept()) {
                serve(ch);
            } catch (ClosedChannelException e) {
                rebind();
            } catch (IOException | RuntimeException e) {
                // e.g. interrupted by a checkpoint or restore (CRIU): the listening socket is still there
                Log.info("control socket: " + oneLine(e.toString()));
                pause(100);
            }
        }
    }

    private void rebind() {
        while (true) {
            try {
                Files.deleteIfExists(path);
                bind();
                Log.info("listening again on " + path);
                return;
            } catch (IOException e) {
                Log.info("cannot listen on " + path + ": " + oneLine(e.toString()) + "; retrying");
                pause(1000);
            }
        }
    }

    private static void pause(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Reads one line (bounded, with a timeout), answers it and returns; the caller closes the channel. */
    private void serve(SocketChannel ch) throws IOException {
        String line = readLine(ch);
        String reply = line == null ? "error no request line within " + READ_TIMEOUT_MS + " ms" : handle(line);
        reply = oneLine(reply);
        if (reply.length() > MAX_REPLY) {
            reply = reply.substring(0, MAX_REPLY - 3) + "...";
        }
        ByteBuffer out = ByteBuffer.wrap((reply + "\n").getBytes(StandardCharsets.UTF_8));
        while (out.hasRemaining()) {
            ch.write(out);
        }
    }

    private static String readLine(SocketChannel ch) throws IOException {
        ByteBuffer buf = ByteBuffer.allocate(MAX_LINE);
        ch.configureBlocking(false);
        try (Selector sel = Selector.open()) {
            ch.register(sel, SelectionKey.OP_READ);
            long deadline = System.nanoTime() + READ_TIMEOUT_MS * 1_000_000;
            while (buf.hasRemaining() && !hasNewline(buf)) {
                long left = (deadline - System.nanoTime()) / 1_000_000;
                if (left <= 0) {
                    return null;
                }
                if (sel.select(left) == 0) {
                    continue;
                }
                sel.selectedKeys().clear();
                if (ch.read(buf) < 0) {
                    break;
                }
            }
        }
        ch.configureBlocking(true);  // the selector is closed: the channel is deregistered
        String text = new String(buf.array(), 0, buf.position(), StandardCharsets.UTF_8);
        int nl = text.indexOf('\n');
        return (nl >= 0 ? text.substring(0, nl) : text).trim();
    }

    private static boolean hasNewline(ByteBuffer buf) {
        for (int i = 0; i < buf.position(); i++) {
            if (buf.get(i) == '\n') {
                return true;
            }
        }
        return false;
    }

    /** One request line → one reply line. */
    String handle(String line) {
        String[] words = line.trim().split("\\s+");
        String cmd = words[0];
        String gen = words.length > 1 ? words[1] : "0";
        switch (cmd) {
            case "before-snapshot":
                return before(gen);
            case "after-restore":
                return after(gen);
            case "ping":
                return "ok firecracer-crac " + hooks.mode();
            default:
                return "error unknown request '" + cmd + "' (before-snapshot N, after-restore N, ping)";
        }
    }

    private String before(String gen) {
        String what = "before-snapshot " + gen;
        if (checkpointed) {
            return "ok " + what + ": already done, no after-restore since (nobody notified)";
        }
        long t0 = System.nanoTime();
        Result r = hooks.before();
        long ms = (System.nanoTime() - t0) / 1_000_000;
        if (r.ok()) {
            checkpointed = true;
            Log.info(what + ": " + r.count() + " in " + ms + " ms");
            return "ok " + what + ": " + r.count() + " notified in " + ms + " ms";
        }
        Result undo = hooks.after();  // CRaC: a failed checkpoint is followed by afterRestore
        String msg = what + ": " + String.join("; ", r.failures()) + " (checkpoint aborted; afterRestore ran"
            + (undo.ok() ? ")" : " and failed: " + String.join("; ", undo.failures()) + ")");
        Log.info("error " + msg);
        return "error " + msg;
    }

    private String after(String gen) {
        String what = "after-restore " + gen;
        if (!checkpointed) {
            return "ok " + what + ": no before-snapshot ran since the last restore (nobody notified)";
        }
        long t0 = System.nanoTime();
        Result r = hooks.after();
        long ms = (System.nanoTime() - t0) / 1_000_000;
        checkpointed = false;
        if (r.ok()) {
            Log.info(what + ": " + r.count() + " in " + ms + " ms");
            return "ok " + what + ": " + r.count() + " notified in " + ms + " ms";
        }
        String msg = what + ": " + String.join("; ", r.failures());
        Log.info("error " + msg);
        return "error " + msg;
    }

    static String oneLine(String s) {
        return s.replaceAll("[\\r\\n\\t]+", " ").trim();
    }

    /** What a notification did: resources reached (-1: unknown) and one line per failure. */
    record Result(int notified, List<String> failures) {
        boolean ok() {
            return failures.isEmpty();
        }

        String count() {
            return notified < 0 ? "the JDK's resources" : notified + (notified == 1 ? " resource" : " resources");
        }
    }

    /** How the global context is driven: ours, or the JDK's own. */
    interface Hooks {
        Result before();

        Result after();

        String mode();
    }

    /** Our {@code jdk.crac} global context: failures name their resource. */
    static final class OwnHooks implements Hooks {
        @Override
        public Result before() {
            return convert(GlobalContext.INSTANCE.notifyBefore());
        }

        @Override
        public Result after() {
            return convert(GlobalContext.INSTANCE.notifyAfter());
        }

        @Override
        public String mode() {
            return "jdk.crac provided by the agent";
        }

        private static Result convert(GlobalContext.Outcome o) {
            List<String> lines = new ArrayList<>();
            o.failures().forEach(f -> lines.add(oneLine(f.line())));
            return new Result(o.notified(), lines);
        }
    }

    /**
     * A JDK with CRaC built in: its global context (the {@code jdk.crac} classes resolve to the JDK's
     * module, not to this jar). Failures are the suppressed exceptions of its Checkpoint/RestoreException.
     * Untested here (no CRaC JDK is reachable); see docs.
     */
    static final class JdkHooks implements Hooks {
        @Override
        public Result before() {
            try {
                jdk.crac.Core.getGlobalContext().beforeCheckpoint(null);
                return new Result(-1, List.of());
            } catch (Exception e) {
                return new Result(-1, lines(e));
            }
        }

        @Override
        public Result after() {
            try {
                jdk.crac.Core.getGlobalContext().afterRestore(null);
                return new Result(-1, List.of());
            } catch (Exception e) {
                return new Result(-1, lines(e));
            }
        }

        @Override
        public String mode() {
            return "bridging to the JDK's own jdk.crac";
        }

        private static List<String> lines(Exception e) {
            List<String> out = new ArrayList<>();
            for (Throwable t : e.getSuppressed()) {
                out.add(oneLine(t.toString()));
            }
            if (out.isEmpty()) {
                out.add(oneLine(e.toString()));
            }
            return out;
        }
    }
}
