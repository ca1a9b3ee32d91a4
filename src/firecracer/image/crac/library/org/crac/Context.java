package org.crac;

import org.crac.impl.Global;
import org.crac.impl.Implementation;

/** A resource that notifies the resources registered with it; the global one is {@link #getGlobalContext()}. */
public abstract class Context<R extends Resource> implements Resource {
    /** The global context: registrations are passed to the JVM's CRaC implementation, if there is one. */
    public static Context<Resource> getGlobalContext() {
        return Global.INSTANCE;
    }

    /** Whether an implementation ({@code jdk.crac}, {@code javax.crac} or the Compat package) was found. */
    public static boolean isImplemented() {
        return Implementation.FOUND != null;
    }

    protected Context() {
    }

    @Override
    public abstract void beforeCheckpoint(Context<? extends Resource> context) throws CheckpointException;

    @Override
    public abstract void afterRestore(Context<? extends Resource> context) throws RestoreException;

    /** Registers {@code resource} (held weakly by the implementation: keep it reachable yourself). */
    public abstract void register(R resource);
}
