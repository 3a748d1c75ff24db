// Creates/updates topics and subscription groups on every master of a cluster through ONE
// DefaultMQAdminExt (what mqadmin updateTopic / updateSubGroup do, without a JVM or client
// start per command). Used by `apache.sh admin`; run with `java -cp 'lib/*' AdminBatch.java`.
//
//   AdminBatch NAMESRV CLUSTER SPEC...
//     SPEC = "topic NAME TYPE"            TYPE: NORMAL|FIFO|DELAY|TRANSACTION (8 queues, RW)
//          | "group NAME FIFO RETRY"      FIFO: true|false, RETRY: retryMaxTimes or -1 (default)
//
// Prints one "OK ..." line per spec; exits 1 at the first failure.
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import org.apache.rocketmq.common.TopicConfig;
import org.apache.rocketmq.remoting.protocol.subscription.SubscriptionGroupConfig;
import org.apache.rocketmq.tools.admin.DefaultMQAdminExt;
import org.apache.rocketmq.tools.command.CommandUtil;

public class AdminBatch {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: AdminBatch NAMESRV CLUSTER SPEC...");
            System.exit(2);
        }
        DefaultMQAdminExt admin = new DefaultMQAdminExt(10_000L);
        admin.setNamesrvAddr(args[0]);
        admin.setInstanceName("apache-sh-admin-" + ProcessHandle.current().pid());
        int rc = 0;
        try {
            admin.start();
            Set<String> masters = CommandUtil.fetchMasterAddrByClusterName(admin, args[1]);
            if (masters.isEmpty()) {
                throw new IllegalStateException("cluster " + args[1] + " has no master registered at " + args[0]);
            }
            for (int i = 2; i < args.length; i++) {
                String[] w = args[i].trim().split("\\s+");
                for (String addr : masters) {
                    if (w[0].equals("topic") && w.length == 3) {
                        TopicConfig tc = new TopicConfig(w[1], 8, 8, 6);
                        Map<String, String> attrs = new HashMap<>();
                        attrs.put("+message.type", w[2]);
                        tc.setAttributes(attrs);
                        admin.createAndUpdateTopicConfig(addr, tc);
                    } else if (w[0].equals("group") && w.length == 4) {
                        SubscriptionGroupConfig g = new SubscriptionGroupConfig();
                        g.setGroupName(w[1]);
                        g.setConsumeMessageOrderly(Boolean.parseBoolean(w[2]));
                        int retry = Integer.parseInt(w[3]);
                        if (retry >= 0) {
                            g.setRetryMaxTimes(retry);
                        }
                        admin.createAndUpdateSubscriptionGroupConfig(addr, g);
                    } else {
                        throw new IllegalArgumentException("bad spec: " + args[i]);
                    }
                }
                System.out.println("OK   " + args[i] + " on " + masters);
            }
        } catch (Exception e) {
            System.out.println("FAIL " + e);
            e.printStackTrace();
            rc = 1;
        } finally {
            admin.shutdown();
        }
        System.exit(rc);
    }
}
