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
1 406.844 1259.340
5 1332.604 13812.535
EOD
plot $d_py200_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_py200_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95'
set title 'TTFT, slow5s'
$d_slow5s_baseline << EOD
1 21351.254 32933.867
5 22922.561 35449.770
EOD
plot $d_slow5s_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_slow5s_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95'
set title 'TTFT, trivial'
$d_trivial_baseline << EOD
1 419.776 1249.574
5 426.130 1040.680
EOD
plot $d_trivial_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_trivial_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95'
unset multiplot
