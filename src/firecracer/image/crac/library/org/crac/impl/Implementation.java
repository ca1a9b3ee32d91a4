package org.crac.impl;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import org.crac.CheckpointException;
import org.crac.Resource;
import org.crac.RestoreException;

/**
 * The JVM's CRaC implementation, found by reflection once: the package named by the system property
 * {@code org.crac.Core.Compat}, then {@code javax.crac}, then {@code jdk.crac} (the order of CRaC's
 * {@code org.crac} library). A package qualifies when it has {@code Resource}, {@code Context},
 * {@code Core}, {@code CheckpointException} and {@code RestoreException}, a static
 * {@code getGlobalContext()} on {@code Core} (or else on {@code Context}) and {@code Context.register(Resource)};
 * {@code Core.checkpointRestore()} is optional. Classes are looked up with this library's class loader, so a
 * package on the boot class path (firecracer's CRaC agent) or in a JDK module qualifies.
 */
public final class Implementation {
    /** The implementation, or null (resources are then dropped and checkpoints are unsupported). */
    public static final Implementation FOUND = find();

    final Class<?> resource;
    private final Class<?> checkpointException;
    private final Class<?> restoreException;
    private final Method register;
    private final Method checkpointRestore;  // null when the package has none
    private final Object globalContext;

    private static Implementation find() {
        String compat = System.getProperty("org.crac.Core.Compat");
        for (String pkg : new String[] {compat, "javax.crac", "jdk.crac"}) {
            if (pkg == null) {
                continue;
            }
            try {
                return new Implementation(pkg);
            } catch (ReflectiveOperationException | LinkageError e) {
                // not this package: try the next
            }
        }
        return null;
    }

    private Implementation(String pkg) throws ReflectiveOperationException {
        resource = Class.forName(pkg + ".Resource");
        Class<?> context = Class.forName(pkg + ".Context");
        Class<?> core = Class.forName(pkg + ".Core");
        checkpointException = Class.forName(pkg + ".CheckpointException");
        restoreException = Class.forName(pkg + ".RestoreException");
        Method cr;
        try {
            cr = core.getMethod("checkpointRestore");
        } catch (NoSuchMethodException e) {
            cr = null;
        }
        checkpointRestore = cr;
        Method global;
        try {
            global = core.getMethod("getGlobalContext");
        } catch (NoSuchMethodException e) {
            global = context.getMethod("getGlobalContext");
        }
        try {
            globalContext = global.invoke(null);
        } catch (InvocationTargetException e) {
            throw new ClassNotFoundException(pkg + ": getGlobalContext failed", e.getCause());
        }
        register = context.getMethod("register", resource);
    }

    /** Registers an adapter implementing the implementation's Resource that forwards to {@code r}. */
    void register(Resource r) {
        Object adapter = Adapter.create(this, r);
        try {
            register.invoke(globalContext, adapter);
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause();
            if (cause instanceof RuntimeException re) {
                throw re;
            }
            if (cause instanceof Error err) {
                throw err;
            }
            throw new IllegalStateException(cause);
        }
    }

    /** The implementation's checkpoint, its exceptions turned into this package's (causes kept suppressed). */
    public void checkpointRestore() throws CheckpointException, RestoreException {
        if (checkpointRestore == null) {
            throw new UnsupportedOperationException("the CRaC implementation has no Core.checkpointRestore()");
        }
        try {
            checkpointRestore.invoke(null);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause();
            if (checkpointException.isInstance(cause)) {
                CheckpointException ce = new CheckpointException(cause.getMessage());
                for (Throwable t : cause.getSuppressed()) {
                    ce.addSuppressed(t);
                }
                throw ce;
            }
            if (restoreException.isInstance(cause)) {
                RestoreException re = new RestoreException(cause.getMessage());
                for (Throwable t : cause.getSuppressed()) {
                    re.addSuppressed(t);
                }
                throw re;
            }
            CheckpointException ce = new CheckpointException();
            ce.addSuppressed(cause);
            throw ce;
        } catch (IllegalAccessException e) {
            CheckpointException ce = new CheckpointException();
            ce.addSuppressed(e);
            throw ce;
        }
    }
}
