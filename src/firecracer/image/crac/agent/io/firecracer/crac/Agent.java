package io.firecracer.crac;

import java.lang.instrument.Instrumentation;
import java.lang.reflect.InvocationTargetException;
import java.nio.file.Paths;
import java.util.jar.JarFile;

/**
 * {@code -javaagent:firecracer-crac-agent.jar}: makes an unmodified application's CRaC resources run on a
 * stock JDK.
 *
 * <p>The jar's {@code Boot-Class-Path} (itself) puts its {@code jdk.crac} package on the boot class path,
 * so CRaC's {@code org.crac} library, which looks for {@code jdk.crac.Core} by reflection, finds it
 * without any {@code -D} option, and code written against {@code jdk.crac} links. Then the control socket
 * (see {@link Control}) lets firecracer's guest agent run the hooks around a checkpoint or snapshot.
 *
 * <p>On a JDK with CRaC built in (a {@code jdk.crac} module in the boot layer) nothing is shadowed: classes
 * of a package that belongs to a named module are never loaded from the boot class path's appended
 * entries, and the control socket drives the JDK's own global context.
 */
public final class Agent {
    private Agent() {
    }

    public static void premain(String args, Instrumentation inst) throws Exception {
        boolean jdkHasCrac = ModuleLayer.boot().findModule("jdk.crac").isPresent();
        if (jdkHasCrac) {
            Log.info("this JDK has CRaC (module jdk.crac): not providing jdk.crac; bridging the control "
                + "socket to the JDK's own global context");
        } else if (Agent.class.getClassLoader() != null) {
            // Boot-Class-Path names the jar by its file name: a renamed jar lands here
            String jar = Paths.get(Agent.class.getProtectionDomain().getCodeSource().getLocation().toURI())
                .toString();
            inst.appendToBootstrapClassLoaderSearch(new JarFile(jar));
            Log.info("appended " + jar + " to the boot class path (its Boot-Class-Path did not name it)");
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
