package jdk.crac;

/** A checkpoint failed; the resources' exceptions are attached as suppressed exceptions. */
public class CheckpointException extends Exception {
    private static final long serialVersionUID = 1L;

    public CheckpointException() {
        super();
    }

    public CheckpointException(String message) {
        super(message);
    }
}
