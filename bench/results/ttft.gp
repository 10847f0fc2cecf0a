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
1 732.208 1592.742
10 2220.648 4055.849
50 4550.275 5372.207
100 4171.839 5132.846
EOD
$d_py200_hot << EOD
1 711.852 1621.939
10 377.313 1537.700
50 358.645 1115.531
100 411.909 1147.574
EOD
$d_py200_warm << EOD
1 506.171 721.681
10 466.519 1049.181
50 412.342 1174.200
100 413.662 1262.943
EOD
$d_py200_cold << EOD
1 213.556 773.232
10 431.016 1175.923
50 403.337 1147.401
100 376.893 1111.550
EOD
plot $d_py200_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_py200_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_py200_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_py200_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_py200_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_py200_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_py200_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_py200_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, slow5s'
$d_slow5s_baseline << EOD
1 12652.041 17459.671
10 15519.651 24905.681
50 16415.544 26075.263
100 16036.008 26231.330
EOD
$d_slow5s_hot << EOD
1 324.929 2104.047
10 397.500 1022.078
50 386.115 1288.271
100 429.886 1427.551
EOD
$d_slow5s_warm << EOD
1 345.935 760.310
10 456.997 1429.785
50 395.796 1132.002
100 420.542 1191.318
EOD
$d_slow5s_cold << EOD
1 753.524 1151.800
10 381.204 1010.813
50 354.954 967.234
100 400.693 1016.089
EOD
plot $d_slow5s_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_slow5s_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_slow5s_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_slow5s_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_slow5s_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_slow5s_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_slow5s_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_slow5s_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, trivial'
$d_trivial_baseline << EOD
1 427.042 1241.517
10 437.835 1152.545
50 421.520 1229.680
100 531.577 1251.284
EOD
$d_trivial_hot << EOD
1 331.040 1476.980
10 426.959 1180.562
50 437.828 1304.703
100 411.919 1095.128
EOD
$d_trivial_warm << EOD
1 468.094 1182.686
10 441.146 1786.187
50 407.043 1224.506
100 387.564 1156.191
EOD
$d_trivial_cold << EOD
1 291.284 3150.852
10 426.022 1117.725
50 421.444 1110.002
100 404.660 1362.346
EOD
plot $d_trivial_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_trivial_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_trivial_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_trivial_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_trivial_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_trivial_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_trivial_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_trivial_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
unset multiplot
