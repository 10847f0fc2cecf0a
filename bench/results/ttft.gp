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
1 665.886 1028.087
10 1834.490 2807.389
50 4268.638 5104.406
100 4029.568 5119.179
EOD
$d_py200_hot << EOD
1 370.439 523.582
10 368.632 1198.748
50 378.044 971.284
100 404.552 1193.212
EOD
$d_py200_warm << EOD
1 487.330 786.909
10 400.154 931.142
50 402.255 1201.767
100 448.301 1263.350
EOD
$d_py200_cold << EOD
1 406.891 2269.027
10 368.409 1146.149
50 427.334 1197.650
100 405.773 1151.320
EOD
plot $d_py200_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_py200_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_py200_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_py200_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_py200_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_py200_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_py200_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_py200_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, slow5s'
$d_slow5s_baseline << EOD
1 16703.150 27977.359
10 15259.620 25185.367
50 16550.189 26023.673
100 15634.263 26469.578
EOD
$d_slow5s_hot << EOD
1 295.361 859.268
10 389.569 1009.352
50 388.178 1468.409
100 415.058 1234.782
EOD
$d_slow5s_warm << EOD
1 533.851 1072.843
10 420.234 1295.084
50 397.397 1038.508
100 420.099 1242.131
EOD
$d_slow5s_cold << EOD
1 230.942 1114.956
10 323.324 679.380
50 475.572 909.714
100 238.087 1393.660
EOD
plot $d_slow5s_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_slow5s_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_slow5s_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_slow5s_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_slow5s_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_slow5s_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_slow5s_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_slow5s_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
set title 'TTFT, trivial'
$d_trivial_baseline << EOD
1 420.576 1241.776
10 425.617 1090.641
50 412.350 1242.237
100 510.033 1231.527
EOD
$d_trivial_hot << EOD
1 355.858 712.041
10 426.725 988.661
50 408.087 1355.270
100 377.109 1087.592
EOD
$d_trivial_warm << EOD
1 468.198 1821.546
10 389.758 1509.281
50 415.578 1198.948
100 400.547 1140.283
EOD
$d_trivial_cold << EOD
1 563.421 646.759
10 341.143 982.116
50 426.216 1293.166
100 409.129 1101.020
EOD
plot $d_trivial_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_trivial_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95', $d_trivial_hot using 1:2 with linespoints lc 2 dt 1 title 'warmpool hot pool p50', $d_trivial_hot using 1:3 with linespoints lc 2 dt 2 title 'warmpool hot pool p95', $d_trivial_warm using 1:2 with linespoints lc 3 dt 1 title 'warmpool warm only p50', $d_trivial_warm using 1:3 with linespoints lc 3 dt 2 title 'warmpool warm only p95', $d_trivial_cold using 1:2 with linespoints lc 4 dt 1 title 'warmpool cold only p50', $d_trivial_cold using 1:3 with linespoints lc 4 dt 2 title 'warmpool cold only p95'
unset multiplot
