set terminal svg size 1200,360 dynamic background '#ffffff'
set output 'ttft.svg'
set multiplot layout 1,1
set logscale y
set xlabel 'arrivals per second'
set ylabel 'TTFT ms'
set key outside right
set grid
set title 'TTFT, trivial'
$d_trivial_baseline << EOD
2 410.506 1236.806
EOD
plot $d_trivial_baseline using 1:2 with linespoints lc 1 dt 1 title 'baseline (cold, coupled) p50', $d_trivial_baseline using 1:3 with linespoints lc 1 dt 2 title 'baseline (cold, coupled) p95'
unset multiplot
