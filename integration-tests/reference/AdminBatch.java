// Runs several mqadmin subcommands in one JVM (apache.sh admin): arguments are mqadmin command
// lines separated by ";". Each must print mqadmin's "... success." line, otherwise exit 1.
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.List;
import org.apache.rocketmq.tools.command.MQAdminStartup;

public class AdminBatch {
    public static void main(String[] args) {
        List<List<String>> commands = new ArrayList<>();
        List<String> cur = new ArrayList<>();
        for (String a : args) {
            if (a.equals(";")) {
                if (!cur.isEmpty()) commands.add(cur);
                cur = new ArrayList<>();
            } else {
                cur.add(a);
            }
        }
        if (!cur.isEmpty()) commands.add(cur);
        PrintStream out = System.out;
        int failed = 0;
        for (List<String> c : commands) {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            PrintStream capture = new PrintStream(buf, true);
            System.setOut(capture);
            try {
                MQAdminStartup.main0(c.toArray(new String[0]), null);
            } catch (Throwable t) {
                t.printStackTrace(capture);
            } finally {
                System.setOut(out);
            }
            String text = buf.toString();
            boolean ok = text.contains("success.");
            if (!ok) failed++;
            out.println((ok ? "OK   " : "FAIL ") + String.join(" ", c));
            if (!ok) out.println(text);
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
