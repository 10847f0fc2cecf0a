set terminal svg size 1200,1080 dynamic background '#ffffff'
set output 'ttft.svg'
set multiplot layout 3,1
set logscale y
set xlabel 'arrivals per second'
set ylabel 'TTFT ms'
set key outside right
set grid
set title 'TTFT, py200'
$d_py200_baseline << EOD
1 618.623 1172.875
5 607.823 2047.492
EOD
$d_py200_hot << EOD
1 429.892 871.635
5 343.244 1423.816
EOD
$d_py200_warm << EOD
1 405.049 739.244
5 338.498 1557.893
EOD
$d_py200_cold << EOD
1 432.195 1566.253
5 361.935 1047.472
EOD
plot $d_py200_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_py200_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_py200_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_py200_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_py200_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_py200_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_py200_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_py200_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, slow5s'
$d_slow5s_baseline << EOD
1 7765.994 11078.275
5 21567.059 35206.963
EOD
$d_slow5s_hot << EOD
1 363.624 1211.168
5 392.703 1431.888
EOD
$d_slow5s_warm << EOD
1 292.269 820.381
5 446.228 1077.012
EOD
$d_slow5s_cold << EOD
1 419.222 1271.014
5 533.576 2008.797
EOD
plot $d_slow5s_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_slow5s_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_slow5s_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_slow5s_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_slow5s_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_slow5s_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_slow5s_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_slow5s_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, trivial'
$d_trivial_baseline << EOD
1 415.161 1240.286
5 430.295 1154.883
EOD
$d_trivial_hot << EOD
1 391.067 856.242
5 370.199 1448.335
EOD
$d_trivial_warm << EOD
1 427.489 1466.488
5 401.267 1464.932
EOD
$d_trivial_cold << EOD
1 280.540 894.462
5 376.671 1013.777
EOD
plot $d_trivial_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_trivial_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_trivial_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_trivial_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_trivial_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_trivial_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_trivial_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_trivial_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
unset multiplot
