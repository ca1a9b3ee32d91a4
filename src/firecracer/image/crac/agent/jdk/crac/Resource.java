package jdk.crac;

/**
 * Something that must act around a checkpoint: close what cannot be checkpointed (connections, files,
 * pools) in {@link #beforeCheckpoint} and reopen it in {@link #afterRestore}.
 *
 * <p>firecracer's stand-in for a CRaC JDK's {@code jdk.crac.Resource}, on the boot class path of a stock
 * JDK through the firecracer CRaC agent (never on a JDK that has the {@code jdk.crac} module).
 */
public interface Resource {
    /** Called before a checkpoint (CRIU) or a microVM snapshot; an exception fails the checkpoint. */
    void beforeCheckpoint(Context<? extends Resource> context) throws Exception;

    /** Called after a restore, and after a checkpoint that failed (the process goes on running). */
    void afterRestore(Context<? extends Resource> context) throws Exception;
}
