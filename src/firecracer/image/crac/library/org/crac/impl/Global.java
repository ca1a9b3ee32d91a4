package org.crac.impl;

import org.crac.CheckpointException;
import org.crac.Context;
import org.crac.Resource;
import org.crac.RestoreException;

/**
 * The application's view of the global context: {@link #register} hands the resource to the
 * implementation (or drops it when there is none, as CRaC's library does). Notifications come from the
 * implementation, never from the application.
 */
public final class Global extends Context<Resource> {
    public static final Global INSTANCE = new Global();

    private Global() {
    }

    @Override
    public void register(Resource resource) {
        if (resource == null) {
            throw new NullPointerException("resource");
        }
        Implementation impl = Implementation.FOUND;
        if (impl != null) {
            impl.register(resource);
        }
    }

    @Override
    public void beforeCheckpoint(Context<? extends Resource> context) throws CheckpointException {
        throw new UnsupportedOperationException("the global context is notified by the JVM, not by callers");
    }

    @Override
    public void afterRestore(Context<? extends Resource> context) throws RestoreException {
        throw new UnsupportedOperationException("the global context is notified by the JVM, not by callers");
    }

    @Override
    public String toString() {
        return "org.crac global context";
    }
}
