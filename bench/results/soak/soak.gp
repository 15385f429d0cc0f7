set terminal pngcairo size 1600,900 font 'sans,10'
set output 'soak.png'
set multiplot layout 2,1 title 'natserve chaos soak: 200 req/s, 30m0s, seed 1 (360000 sent, 0 never answered, 0 executed twice)'
set xrange [0:1800]
set lmargin 12
set grid
set key bottom right
unset object
unset label
set object 1 rect from 37.4, graph 0 to 39.4, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set label 1 'kill replica' at 37.4, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#d62728'
set object 2 rect from 150.5, graph 0 to 155.5, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set label 2 'kill leader' at 150.5, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#2ca02c'
set object 3 rect from 241.8, graph 0 to 249.7, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set label 3 'kill leader' at 241.8, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#2ca02c'
set object 4 rect from 333.6, graph 0 to 340.4, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set label 4 'STOP replica' at 333.6, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#ff7f0e'
set object 5 rect from 438.4, graph 0 to 441.7, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set label 5 'kill agent' at 438.4, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#9467bd'
set object 6 rect from 516.6, graph 0 to 520.9, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set label 6 'kill NATS' at 516.6, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#1f77b4'
set object 7 rect from 627.1, graph 0 to 634.9, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set label 7 'STOP replica' at 627.1, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#ff7f0e'
set object 8 rect from 720.5, graph 0 to 724.6, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set label 8 'kill NATS' at 720.5, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#1f77b4'
set object 9 rect from 815.2, graph 0 to 823.2, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set label 9 'kill agent' at 815.2, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#9467bd'
set object 10 rect from 900.9, graph 0 to 910.7, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set label 10 'partition' at 900.9, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#8c564b'
set object 11 rect from 999.9, graph 0 to 1005.1, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set label 11 'STOP replica' at 999.9, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#ff7f0e'
set object 12 rect from 1106.1, graph 0 to 1108.1, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set label 12 'kill replica' at 1106.1, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#d62728'
set object 13 rect from 1201.4, graph 0 to 1208.6, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set label 13 'kill agent' at 1201.4, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#9467bd'
set object 14 rect from 1295.0, graph 0 to 1304.8, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set label 14 'partition' at 1295.0, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#8c564b'
set object 15 rect from 1407.3, graph 0 to 1409.3, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set label 15 'kill replica' at 1407.3, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#d62728'
set object 16 rect from 1492.2, graph 0 to 1505.5, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set label 16 'partition' at 1492.2, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#8c564b'
set object 17 rect from 1588.4, graph 0 to 1596.5, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set label 17 'kill leader' at 1588.4, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#2ca02c'
set object 18 rect from 1681.1, graph 0 to 1688.1, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set label 18 'kill NATS' at 1681.1, graph 0.05 rotate by 90 font 'sans,8' tc rgb '#1f77b4'
set ylabel 'success rate per second (%)'
set yrange [0:105]
plot 'soak.dat' using 1:2 with lines lw 1.5 lc rgb '#222222' title 'success %'
unset object
unset label
set object 1 rect from 37.4, graph 0 to 39.4, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set object 2 rect from 150.5, graph 0 to 155.5, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set object 3 rect from 241.8, graph 0 to 249.7, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set object 4 rect from 333.6, graph 0 to 340.4, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set object 5 rect from 438.4, graph 0 to 441.7, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set object 6 rect from 516.6, graph 0 to 520.9, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set object 7 rect from 627.1, graph 0 to 634.9, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set object 8 rect from 720.5, graph 0 to 724.6, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set object 9 rect from 815.2, graph 0 to 823.2, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set object 10 rect from 900.9, graph 0 to 910.7, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set object 11 rect from 999.9, graph 0 to 1005.1, graph 1 fc rgb '#ff7f0e' fs transparent solid 0.3 noborder behind
set object 12 rect from 1106.1, graph 0 to 1108.1, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set object 13 rect from 1201.4, graph 0 to 1208.6, graph 1 fc rgb '#9467bd' fs transparent solid 0.3 noborder behind
set object 14 rect from 1295.0, graph 0 to 1304.8, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set object 15 rect from 1407.3, graph 0 to 1409.3, graph 1 fc rgb '#d62728' fs transparent solid 0.3 noborder behind
set object 16 rect from 1492.2, graph 0 to 1505.5, graph 1 fc rgb '#8c564b' fs transparent solid 0.3 noborder behind
set object 17 rect from 1588.4, graph 0 to 1596.5, graph 1 fc rgb '#2ca02c' fs transparent solid 0.3 noborder behind
set object 18 rect from 1681.1, graph 0 to 1688.1, graph 1 fc rgb '#1f77b4' fs transparent solid 0.3 noborder behind
set ylabel 'latency (ms, log)'
set xlabel 'seconds since the start (bands: faults, until restored)'
set logscale y
set yrange [1:*]
set key top right
plot 'soak.dat' using 1:3 with lines lc rgb '#1f77b4' title 'p50', '' using 1:4 with lines lc rgb '#ff7f0e' title 'p99', '' using 1:5 with lines lc rgb '#d62728' title 'max'
unset multiplot
