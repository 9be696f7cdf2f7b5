// WordCount: the Hadoop MapReduce workload of hack/experiment.
//
//   java -cp wordcount.jar:HADOOP_JARS WordCount INPUT OUTDIR [MAPS]
//
// Hadoop's classic WordCount (org.apache.hadoop.mapreduce, with a combiner),
// run by Hadoop's LocalJobRunner (mapreduce.framework.name=local) on the local
// file system: one JVM, MAPS map tasks at a time, one reducer. Writes
// "word<TAB>count" lines to OUTDIR/part-r-00000. hack/mkbundle-hadoop compiles
// it with javac against the Hadoop jars pyspark ships.
import java.io.IOException;
import java.util.StringTokenizer;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.io.IntWritable;
import org.apache.hadoop.io.LongWritable;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.mapreduce.Job;
import org.apache.hadoop.mapreduce.Mapper;
import org.apache.hadoop.mapreduce.Reducer;
import org.apache.hadoop.mapreduce.lib.input.FileInputFormat;
import org.apache.hadoop.mapreduce.lib.output.FileOutputFormat;

public class WordCount {
    public static class TokenMapper extends Mapper<LongWritable, Text, Text, IntWritable> {
        private static final IntWritable ONE = new IntWritable(1);
        private final Text word = new Text();

        @Override
        protected void map(LongWritable key, Text value, Context ctx)
                throws IOException, InterruptedException {
            StringTokenizer it = new StringTokenizer(value.toString());
            while (it.hasMoreTokens()) {
                word.set(it.nextToken());
                ctx.write(word, ONE);
            }
        }
    }

    public static class SumReducer extends Reducer<Text, IntWritable, Text, IntWritable> {
        private final IntWritable sum = new IntWritable();

        @Override
        protected void reduce(Text key, Iterable<IntWritable> values, Context ctx)
                throws IOException, InterruptedException {
            int s = 0;
            for (IntWritable v : values) {
                s += v.get();
            }
            sum.set(s);
            ctx.write(key, sum);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: WordCount INPUT OUTDIR [MAPS]");
            System.exit(2);
        }
        Configuration conf = new Configuration();
        conf.set("mapreduce.framework.name", "local");
        conf.set("fs.defaultFS", "file:///");
        conf.set("hadoop.tmp.dir", "/tmp/hadoop");
        conf.set("mapreduce.local.map.tasks.maximum", args.length > 2 ? args[2] : "2");
        // 16 MiB splits: a few map tasks even for a small corpus.
        conf.setLong("mapreduce.input.fileinputformat.split.maxsize", 16L << 20);
        Job job = Job.getInstance(conf, "ferry-wordcount");
        job.setJarByClass(WordCount.class);
        job.setMapperClass(TokenMapper.class);
        job.setCombinerClass(SumReducer.class);
        job.setReducerClass(SumReducer.class);
        job.setOutputKeyClass(Text.class);
        job.setOutputValueClass(IntWritable.class);
        job.setNumReduceTasks(1);
        FileInputFormat.addInputPath(job, new Path("file://" + args[0]));
        FileOutputFormat.setOutputPath(job, new Path("file://" + args[1]));
        long t0 = System.currentTimeMillis();
        boolean ok = job.waitForCompletion(true);
        System.out.printf("wordcount %s in %.1f s%n", ok ? "done" : "FAILED",
                (System.currentTimeMillis() - t0) / 1000.0);
        System.exit(ok ? 0 : 1);
    }
}
