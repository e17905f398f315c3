# stages of the old-vs-new call (issue 16, helper hA); run from the repo root; $O the output folder
set -u
O=$1
P="DRAWS=copy CHUNKS=6 TRACE=1 HOSTCOMPOSE=0"
cp -a .gpu_hA/base/. ./ && cp -a .gpu_hA/old/. ./
echo "### OLD $(date +%T)"
PYTHONPATH=$PWD timeout 120 python tools/motion_gpu_same.py save /tmp/same64.npz --sessions 64 | tee $O/same_save.json
env $P STREAMS="200 400" VARIANTS=fp32 BENCH=0 OUT=$O/old_prof TAG=_old bash tools/gpu/motion_torch_gpu.sh 2>&1 | grep -v "^  adding\|Warning" | tail -20
env DRAWS=" " STREAMS="200 400" BENCH=1 HOSTCOMPOSE=0 OUT=$O/old_bench TAG=_oldbench bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -5
cp -a .gpu_hA/new/. ./
echo "### NEW $(date +%T)"
for pad in 0 64; do
  PYTHONPATH=$PWD timeout 120 python tools/motion_gpu_same.py check /tmp/same64.npz --pad-rows $pad | tee -a $O/same_check.json
done
env $P STREAMS="200 400" VARIANTS=fp32 BENCH=0 OUT=$O/new_prof TAG=_new bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -20
env DRAWS=" " STREAMS="200 400" BENCH=1 HOSTCOMPOSE=0 OUT=$O/new_bench TAG=_newbench bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -5
echo "### PADS $(date +%T)"
env $P STREAMS="200" VARIANTS=pad64,pad32 SEPARATE=1 BENCH=0 OUT=$O/new_pad200 TAG=_pad200 bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -20
env $P STREAMS="400" VARIANTS=pad64 BENCH=0 OUT=$O/new_pad400 TAG=_pad400 bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -20
echo "### V7 $(date +%T)"
TORCH_CUDNN_V8_API_DISABLED=1 PYTHONPATH=$PWD timeout 120 python tools/motion_gpu_same.py check /tmp/same64.npz | tee $O/same_check_v7.json
env TORCH_CUDNN_V8_API_DISABLED=1 $P STREAMS="200" VARIANTS=fp32 BENCH=0 OUT=$O/new_v7 TAG=_v7 bash tools/gpu/motion_torch_gpu.sh 2>&1 | tail -20
echo "### END $(date +%T)"
