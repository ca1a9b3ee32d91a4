package io.firecracer.crac;

import java.lang.ref.WeakReference;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Objects;
import jdk.crac.CheckpointException;
import jdk.crac.Context;
import jdk.crac.Resource;
import jdk.crac.RestoreException;

/**
 * The global context of a stock JDK running the firecracer CRaC agent, with CRaC's rules:
 * resources are held through weak references (the application keeps them alive), {@code beforeCheckpoint}
 * runs in reverse registration order and {@code afterRestore} in registration order, and every
 * resource is notified even when an earlier one failed; the failures become one
 * {@link CheckpointException}/{@link RestoreException} with the resources' exceptions suppressed (the
 * suppressed exceptions of a nested context's exception are flattened into it).
 *
 * <p>{@link #notifyBefore()}/{@link #notifyAfter()} are the same notifications for the control socket,
 * keeping which resource threw what (the reply names them).
 */
public final class GlobalContext extends Context<Resource> {
    public static final GlobalContext INSTANCE = new GlobalContext();

    private final List<WeakReference<Resource>> resources = new ArrayList<>();

    private GlobalContext() {
    }

    /** One resource's failure: a description of the resource and what it threw. */
    public record Failure(String resource, Throwable error) {
        /** {@code resource: ExceptionClass: message} on one line. */
        public String line() {
            String msg = error.getMessage();
            return resource + ": " + error.getClass().getName() + (msg == null ? "" : ": " + msg);
        }
    }

    /** What one notification did: how many resources it reached and which of them failed. */
    public record Outcome(int notified, List<Failure> failures) {
        public boolean ok() {
            return failures.isEmpty();
        }
    }

    @Override
    public synchronized void register(Resource resource) {
        Objects.requireNonNull(resource, "resource");
        resources.removeIf(ref -> ref.get() == null);
        resources.add(new WeakReference<>(resource));
    }

    /** Resources still alive, in registration order (strong references for one notification). */
    private List<Resource> alive() {
        List<Resource> out = new ArrayList<>();
        for (Iterator<WeakReference<Resource>> it = resources.iterator(); it.hasNext(); ) {
            Resource r = it.next().get();
            if (r == null) {
                it.remove();
            } else {
                out.add(r);
            }
        }
        return out;
    }

    /** {@code beforeCheckpoint} of every live resource, last registered first. */
    public synchronized Outcome notifyBefore() {
        List<Resource> live = alive();
        List<Failure> failures = new ArrayList<>();
        for (int i = live.size() - 1; i >= 0; i--) {
            Resource r = live.get(i);
            try {
                r.beforeCheckpoint(this);
            } catch (CheckpointException e) {
                collect(failures, r, e);
            } catch (Exception e) {
                failures.add(new Failure(describe(r), e));
            }
        }
        return new Outcome(live.size(), failures);
    }

    /** {@code afterRestore} of every live resource, first registered first. */
    public synchronized Outcome notifyAfter() {
        List<Resource> live = alive();
        List<Failure> failures = new ArrayList<>();
        for (Resource r : live) {
            try {
                r.afterRestore(this);
            } catch (RestoreException e) {
                collect(failures, r, e);
            } catch (Exception e) {
                failures.add(new Failure(describe(r), e));
            }
        }
        return new Outcome(live.size(), failures);
    }

    /** A nested context's exception stands for its resources' exceptions: take those (as CRaC does). */
    private static void collect(List<Failure> failures, Resource r, Exception e) {
        Throwable[] inner = e.getSuppressed();
        if (inner.length == 0) {
            failures.add(new Failure(describe(r), e));
        }
        for (Throwable t : inner) {
            failures.add(new Failure(describe(r), t));
        }
    }

    @Override
    public void beforeCheckpoint(Context<? extends Resource> context) throws CheckpointException {
        Outcome o = notifyBefore();
        if (!o.ok()) {
            CheckpointException e = new CheckpointException();
            o.failures().forEach(f -> e.addSuppressed(f.error()));
            throw e;
        }
    }

    @Override
    public void afterRestore(Context<? extends Resource> context) throws RestoreException {
        Outcome o = notifyAfter();
        if (!o.ok()) {
            RestoreException e = new RestoreException();
            o.failures().forEach(f -> e.addSuppressed(f.error()));
            throw e;
        }
    }

    /** The resource's {@code toString()} (an {@code org.crac} adapter names the application's object). */
    static String describe(Resource r) {
        try {
            return String.valueOf(r);
        } catch (RuntimeException e) {
            return r.getClass().getName();
        }
    }

    @Override
    public String toString() {
        return "firecracer global context";
    }
}
