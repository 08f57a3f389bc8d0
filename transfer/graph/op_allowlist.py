"""The op types a backbone may run: pure computation on tensors in memory, nothing else.

This is an allow-list, reviewed by hand: TensorFlow adds file-, dataset- and network-touching
ops every release (`PrintV2` to `file://`, `SqlDataset`, `InitializeTableFromTextFile`,
`DatasetFromGraph` running a graph serialized in a string …), so anything not named here is
refused (`transfer.graph.safety`) unless the user opts in with `--allow-op TYPE`. An op belongs here
only if it reads and writes nothing but its tensors, in-process variables and tables: no files,
no network, no Python, no datasets, no logging, no process control. `tests/test_security.py`
checks every name against TensorFlow's op registry and prints what `tf.raw_ops` has beyond it.
"""
from __future__ import annotations


def _ops(text: str) -> frozenset[str]:
    return frozenset(text.split())


GRAPH_PLUMBING = _ops("""
    Const Placeholder PlaceholderV2 PlaceholderWithDefault Identity IdentityN RefIdentity Snapshot
    NoOp StopGradient PreventGradient CheckNumerics CheckNumericsV2 Assert EnsureShape
    DebugGradientIdentity DebugGradientRefIdentity FakeParam
""")

# TF1 control flow (frames and loops) and TF2 functional control flow. Functions these ops call
# (loop bodies, branches, function calls) are walked and checked op by op.
CONTROL_FLOW = _ops("""
    Enter Exit Switch Merge NextIteration LoopCond RefEnter RefExit RefSwitch RefMerge
    RefNextIteration RefSelect ControlTrigger
    If StatelessIf While StatelessWhile Case StatelessCase For PartitionedCall
    StatefulPartitionedCall SymbolicGradient
""")

ELEMENTWISE = _ops("""
    Abs Acos Acosh Add AddN AddV2 AccumulateNV2 Angle ApproximateEqual Asin Asinh Atan Atan2 Atanh
    BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0 BesselK0e BesselK1 BesselK1e
    BesselY0 BesselY1 Betainc Bitcast BitwiseAnd BitwiseOr BitwiseXor Cast Ceil ClipByValue Complex
    ComplexAbs Conj Cos Cosh Cross Dawsn Digamma Div DivNoNan Equal Erf Erfc Erfinv Exp Expint Expm1
    Floor FloorDiv FloorMod FresnelCos FresnelSin Greater GreaterEqual Igamma IgammaGradA Igammac
    Imag Inv InvGrad Invert IsFinite IsInf IsNan LeftShift Less LessEqual Lgamma Log Log1p
    LogicalAnd LogicalNot LogicalOr Maximum Minimum Mod Mul MulNoNan Ndtri Neg NextAfter NotEqual
    Polygamma PopulationCount Pow Real RealDiv Reciprocal ReciprocalGrad RightShift Rint Round Rsqrt
    RsqrtGrad Select SelectV2 Sigmoid SigmoidGrad Sign Sin Sinh Spence Sqrt SqrtGrad Square
    SquaredDifference Sub Tan Tanh TanhGrad TruncateDiv TruncateMod Xdivy Xlog1py Xlogy Zeta
""")

REDUCTIONS = _ops("""
    All Any ArgMax ArgMin EuclideanNorm Max Mean Min Prod Sum Cumsum Cumprod CumulativeLogsumexp
    SegmentMax SegmentMean SegmentMin SegmentProd SegmentSum UnsortedSegmentMax UnsortedSegmentMin
    UnsortedSegmentProd UnsortedSegmentSum Bincount DenseBincount HistogramFixedWidth
""")

LINEAR_ALGEBRA = _ops("""
    MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum SparseMatMul Cholesky MatrixInverse
    MatrixDeterminant LogMatrixDeterminant MatrixSolve MatrixSolveLs MatrixTriangularSolve
    MatrixBandPart MatrixDiag MatrixDiagV2 MatrixDiagV3 MatrixDiagPart MatrixDiagPartV2
    MatrixDiagPartV3 MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MatrixExponential
    MatrixLogarithm MatrixSquareRoot Qr Svd SelfAdjointEigV2 Eig Lu TridiagonalMatMul
    TridiagonalSolve BandedTriangularSolve Diag DiagPart
    FFT FFT2D FFT3D FFTND IFFT IFFT2D IFFT3D IFFTND RFFT RFFT2D RFFT3D RFFTND IRFFT IRFFT2D IRFFT3D
    IRFFTND
""")

NEURAL_NETWORK = _ops("""
    AvgPool AvgPool3D BiasAdd BiasAddV1 Conv Conv2D Conv3D Conv2DBackpropInput Conv2DBackpropInputV2
    Conv3DBackpropInputV2 DepthwiseConv2dNative Dilation2D Elu Selu LeakyRelu Relu Relu6 Softmax
    LogSoftmax Softplus Softsign FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3
    BatchNormWithGlobalNormalization LRN MaxPool MaxPoolV2 MaxPool3D MaxPoolWithArgmax
    FractionalAvgPool FractionalMaxPool L2Loss InTopK InTopKV2 TopK TopKV2 NthElement ApproxTopK
    FusedPadConv2D FusedResizeAndPadConv2D DataFormatDimMap DataFormatVecPermute
    SoftmaxCrossEntropyWithLogits SparseSoftmaxCrossEntropyWithLogits
    BlockLSTM BlockLSTMV2 LSTMBlockCell GRUBlockCell CudnnRNN CudnnRNNV2 CudnnRNNV3
""")

# Gradients: graphs exported from training code carry them; they are arithmetic like the rest.
GRADIENTS = _ops("""
    AvgPoolGrad AvgPool3DGrad BiasAddGrad BroadcastGradientArgs Conv2DBackpropFilter
    Conv2DBackpropFilterV2 Conv3DBackpropFilterV2 DepthwiseConv2dNativeBackpropFilter
    DepthwiseConv2dNativeBackpropInput EluGrad FusedBatchNormGrad FusedBatchNormGradV2
    FusedBatchNormGradV3 LeakyReluGrad LRNGrad MaxPoolGrad MaxPoolGradV2 MaxPoolGradGrad
    MaxPoolGradGradV2 MaxPoolGradWithArgmax MaxPool3DGrad Relu6Grad ReluGrad SeluGrad SoftplusGrad
    SoftsignGrad TileGrad StridedSliceGrad ResizeBilinearGrad ResizeNearestNeighborGrad
    ResizeBicubicGrad BlockLSTMGrad BlockLSTMGradV2 LSTMBlockCellGrad GRUBlockCellGrad
    CudnnRNNBackprop CudnnRNNBackpropV2 CudnnRNNBackpropV3
""")

ARRAYS = _ops("""
    BatchToSpace BatchToSpaceND BroadcastArgs BroadcastTo Concat ConcatV2 ConcatOffset DepthToSpace
    Empty ExpandDims ExtractImagePatches ExtractVolumePatches Fill Gather GatherNd GatherV2
    InvertPermutation LinSpace ListDiff MirrorPad MirrorPadGrad OneHot OnesLike Pack Pad PadV2
    ParallelConcat Range Rank Reshape Reverse ReverseV2 ReverseSequence Roll ScatterNd Shape ShapeN
    Size Slice SpaceToBatch SpaceToBatchND SpaceToDepth Split SplitV Squeeze StridedSlice Tile
    Transpose ConjugateTranspose Unique UniqueV2 UniqueWithCounts UniqueWithCountsV2 Unpack
    UnravelIndex Where ZerosLike TensorScatterAdd TensorScatterMax TensorScatterMin TensorScatterSub
    TensorScatterUpdate TensorStridedSliceUpdate DynamicPartition DynamicStitch ParallelDynamicStitch
    LowerBound UpperBound Bucketize InplaceAdd InplaceSub InplaceUpdate
    Dequantize QuantizeV2 QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4
    FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel
""")

# Lists and arrays of tensors inside loops (TF1 TensorArray, TF2 TensorList and TensorMap).
TENSOR_COLLECTIONS = _ops("""
    TensorArrayV3 TensorArrayWriteV3 TensorArrayReadV3 TensorArrayGatherV3 TensorArrayScatterV3
    TensorArraySizeV3 TensorArrayConcatV3 TensorArraySplitV3 TensorArrayGradV3
    TensorArrayGradWithShape TensorArrayCloseV3 TensorArrayV2 TensorArrayWriteV2 TensorArrayReadV2
    TensorArrayGatherV2 TensorArrayScatterV2 TensorArraySizeV2 TensorArrayConcatV2
    TensorArraySplitV2 TensorArrayGradV2 TensorArrayCloseV2
    EmptyTensorList TensorListConcat TensorListConcatLists TensorListConcatV2
    TensorListElementShape TensorListFromTensor TensorListGather TensorListGetItem
    TensorListLength TensorListPopBack TensorListPushBack TensorListPushBackBatch TensorListReserve
    TensorListResize TensorListScatter TensorListScatterIntoExistingList TensorListScatterV2
    TensorListSetItem TensorListSplit TensorListStack
    EmptyTensorMap TensorMapErase TensorMapHasKey TensorMapInsert TensorMapLookup TensorMapSize
    TensorMapStackKeys OptionalFromValue OptionalGetValue OptionalHasValue OptionalNone
""")

# Variables and hash tables live in the process; filling a table from a file is not here.
IN_MEMORY_STATE = _ops("""
    VariableV2 Variable VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp
    AssignSubVariableOp VarIsInitializedOp IsVariableInitialized DestroyResourceOp VariableShape
    ResourceGather ResourceGatherNd Assign AssignAdd AssignSub TemporaryVariable
    DestroyTemporaryVariable
    HashTable HashTableV2 MutableHashTable MutableHashTableV2 MutableHashTableOfTensors
    MutableHashTableOfTensorsV2 MutableDenseHashTable MutableDenseHashTableV2 InitializeTable
    InitializeTableV2 LookupTableFind LookupTableFindV2 LookupTableSize LookupTableSizeV2
    LookupTableInsert LookupTableInsertV2 LookupTableImport LookupTableImportV2 LookupTableExport
    LookupTableExportV2 LookupTableRemoveV2
    ApplyGradientDescent ResourceApplyGradientDescent ApplyMomentum ResourceApplyMomentum
    ResourceApplyKerasMomentum ApplyAdam ResourceApplyAdam ResourceApplyAdamWithAmsgrad
    ApplyAdaMax ResourceApplyAdaMax ApplyRMSProp ResourceApplyRMSProp ApplyCenteredRMSProp
    ResourceApplyCenteredRMSProp ApplyAdagrad ResourceApplyAdagrad ApplyAdagradV2
    ResourceApplyAdagradV2 ApplyAdadelta ResourceApplyAdadelta ApplyFtrl ResourceApplyFtrl
    ApplyFtrlV2 ResourceApplyFtrlV2
""")

RANDOM = _ops("""
    RandomUniform RandomUniformInt RandomStandardNormal TruncatedNormal RandomShuffle Multinomial
    RandomGamma RandomGammaGrad RandomPoisson RandomPoissonV2 ParameterizedTruncatedNormal
    StatelessRandomUniform StatelessRandomUniformInt StatelessRandomUniformFullInt
    StatelessRandomNormal StatelessTruncatedNormal StatelessMultinomial StatelessRandomBinomial
    StatelessRandomGammaV2 StatelessRandomGammaV3 StatelessRandomPoisson
    StatelessParameterizedTruncatedNormal StatelessRandomUniformV2 StatelessRandomUniformIntV2
    StatelessRandomUniformFullIntV2 StatelessRandomNormalV2 StatelessTruncatedNormalV2
    StatelessRandomGetKeyCounter StatelessRandomGetAlg StatelessRandomGetKeyCounterAlg
    StatelessShuffle RandomIndexShuffle StatefulUniform StatefulUniformInt StatefulUniformFullInt
    StatefulStandardNormalV2 StatefulTruncatedNormal RngSkip RngReadAndSkip
""")

# Images, audio and records held in tensors (a JPEG string fed to the graph, say): decoding and
# resizing them is computation; none of these opens a file.
IMAGES_AND_RECORDS = _ops("""
    ResizeBilinear ResizeNearestNeighbor ResizeBicubic ResizeArea ScaleAndTranslate CropAndResize
    DecodeJpeg DecodeAndCropJpeg DecodePng DecodeBmp DecodeGif DecodeImage ExtractJpegShape
    EncodeJpeg EncodeJpegVariableQuality EncodePng AdjustContrastv2 AdjustHue AdjustSaturation
    RGBToHSV HSVToRGB NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3
    NonMaxSuppressionV4 NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps CombinedNonMaxSuppression
    ImageProjectiveTransformV2 ImageProjectiveTransformV3 DrawBoundingBoxes DrawBoundingBoxesV2
    SampleDistortedBoundingBox SampleDistortedBoundingBoxV2 StatelessSampleDistortedBoundingBox
    ExtractGlimpse ExtractGlimpseV2 GenerateBoundingBoxProposals
    DecodeRaw DecodePaddedRaw DecodeBase64 EncodeBase64 DecodeCompressed DecodeWav EncodeWav
    AudioSpectrogram Mfcc DecodeCSV DecodeJSONExample ParseExample ParseExampleV2
    ParseSingleExample ParseSequenceExample ParseSequenceExampleV2 ParseSingleSequenceExample
    ParseTensor SerializeTensor
""")

STRINGS = _ops("""
    StringJoin StringSplit StringSplitV2 StringStrip StringLength StringLower StringUpper
    StringToNumber StringToHashBucket StringToHashBucketFast StringToHashBucketStrong Substr AsString
    ReduceJoin RegexFullMatch RegexReplace StaticRegexFullMatch StaticRegexReplace StringFormat
    UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript UnicodeTranscode StringNGrams
    UnsortedSegmentJoin Fingerprint
""")

SPARSE_AND_RAGGED = _ops("""
    SparseToDense SparseTensorDenseMatMul SparseReshape SparseFillEmptyRows SparseSegmentMean
    SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSqrtNWithNumSegments
    SparseSegmentSum SparseSegmentSumWithNumSegments SparseReorder SparseSlice SparseConcat SparseAdd
    SparseReduceSum SparseReduceMax SparseSoftmax SparseTensorDenseAdd SparseCross SparseCrossV2
    SparseCrossHashed RaggedTensorToTensor RaggedGather RaggedRange RaggedTensorToSparse
    RaggedTensorFromVariant RaggedTensorToVariant RaggedCross RaggedFillEmptyRows
""")

ALLOWED_OPS: frozenset[str] = (
    GRAPH_PLUMBING | CONTROL_FLOW | ELEMENTWISE | REDUCTIONS | LINEAR_ALGEBRA | NEURAL_NETWORK
    | GRADIENTS | ARRAYS | TENSOR_COLLECTIONS | IN_MEMORY_STATE | RANDOM | IMAGES_AND_RECORDS
    | STRINGS | SPARSE_AND_RAGGED
)

# Allowed only in a SavedModel's restore op: reading the model's own variables/ checkpoint,
# which both TensorFlow loaders run. (Its save op is never run and is not checked.)
RESTORE_OPS = _ops("RestoreV2 Restore RestoreSlice")
