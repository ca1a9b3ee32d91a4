package jdk.crac;

import io.firecracer.crac.GlobalContext;

/**
 * The entry point CRaC's {@code org.crac} library looks up by reflection ({@code getGlobalContext},
 * {@code checkpointRestore}).
 *
 * <p>On a stock JDK the process cannot checkpoint itself: firecracer's guest agent makes the checkpoint
 * (a CRIU dump or a microVM snapshot) and drives the global context over the agent's control socket.
 * {@link #checkpointRestore()} therefore fails without notifying anyone, as CRaC's does when checkpoints are
 * unsupported.
 */
public final class Core {
    private Core() {
    }

    /** The context every application resource registers with. */
    public static Context<Resource> getGlobalContext() {
        return GlobalContext.INSTANCE;
    }

    /**
     * Always fails here: the checkpoint is requested from outside the JVM (firecracer's guest agent).
     *
     * @throws CheckpointException carrying an {@link UnsupportedOperationException} that says so
     */
    public static void checkpointRestore() throws CheckpointException, RestoreException {
        CheckpointException e = new CheckpointException(
            "this JVM cannot checkpoint itself (a stock JDK with the firecracer CRaC agent)");
        e.addSuppressed(new UnsupportedOperationException(
            "checkpoints are made by firecracer's guest agent, which runs the resources' hooks over "
            + io.firecracer.crac.Control.describe()));
        throw e;
    }
}
