package io.firecracer.crac;

import java.lang.instrument.Instrumentation;
import java.lang.reflect.InvocationTargetException;
import java.nio.file.Paths;
import java.util.jar.JarFile;

/**
 * {@code -javaagent:firecracer-crac-agent.jar}: makes an unmodified application's CRaC resources run on a
 * stock JDK.
 *
 * <p>{@code premain} appends the agent's own jar to the boot class path
 * ({@link Instrumentation#appendToBootstrapClassLoaderSearch}), so its {@code jdk.crac} package is visible
 * to every class loader: CRaC's {@code org.crac} library, which looks for {@code jdk.crac.Core} by
 * reflection, finds it without any {@code -D} option (it looks when the application first touches it,
 * after {@code premain}), and code written against {@code jdk.crac} links. Not the manifest's
 * {@code Boot-Class-Path}: that appends at VM start, and JDK 17 then refuses an AppCDS archive dumped
 * without it ("BOOT classpath mismatch"); appended at {@code premain}, the archive made without the agent
 * stays usable. Then the control socket (see {@link Control}) lets firecracer's guest agent run the hooks
 * around a checkpoint or snapshot.
 *
 * <p>On a JDK with CRaC built in (a {@code jdk.crac} module in the boot layer) nothing is appended or
 * shadowed (classes of a package in a named module never come from the boot class path's appended
 * entries anyway), and the control socket drives the JDK's own global context.
 */
public final class Agent {
    private Agent() {
    }

    public static void premain(String args, Instrumentation inst) throws Exception {
        boolean jdkHasCrac = ModuleLayer.boot().findModule("jdk.crac").isPresent();
        if (jdkHasCrac) {
            Log.info("this JDK has CRaC (module jdk.crac): not providing jdk.crac; bridging the control "
                + "socket to the JDK's own global context");
        }
        if (Agent.class.getClassLoader() != null) {  // not already on the boot path (-Xbootclasspath/a)
            String jar = Paths.get(Agent.class.getProtectionDomain().getCodeSource().getLocation().toURI())
                .toString();
            inst.appendToBootstrapClassLoaderSearch(new JarFile(jar));
        }
        // the boot loader's copy: the one jdk.crac.Core sees
        Class<?> control = Class.forName("io.firecracer.crac.Control", true, null);
        try {
            control.getMethod("start", boolean.class).invoke(null, jdkHasCrac);
        } catch (InvocationTargetException e) {
            throw new IllegalStateException("firecracer-crac: start failed", e.getCause());
        }
    }
}
