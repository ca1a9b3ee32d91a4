package org.crac;

import org.crac.impl.Global;
import org.crac.impl.Implementation;

/** The API's entry point, as in CRaC's {@code org.crac.Core}. */
public class Core {
    protected Core() {
    }

    /** Same as {@link Context#getGlobalContext()}. */
    public static Context<Resource> getGlobalContext() {
        return Global.INSTANCE;
    }

    /**
     * Asks the implementation for a checkpoint and returns after the restore.
     *
     * @throws UnsupportedOperationException without an implementation
     */
    public static void checkpointRestore() throws CheckpointException, RestoreException {
        Implementation impl = Implementation.FOUND;
        if (impl == null) {
            throw new UnsupportedOperationException("no CRaC implementation in this JVM");
        }
        impl.checkpointRestore();
    }
}
